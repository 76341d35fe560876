"""Bad input, command by command: one line `rrcm: error: ...`, exit status 2, and nothing written.

Every case runs the real command-line entry point (`rrcm.cli.main`, as `python -m rrcm` does minus the
malloc re-exec) inside a scratch workspace that holds the case's inputs and output folder, with the
working directory and the cache inside it too, and checks that not one file or folder in it was
created, changed or removed: a failed run leaves the workspace exactly as it found it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from rrcm.checkpoint import read_checkpoint_config, save_checkpoint
from rrcm.cli import main
from rrcm.models import build_model
from tests.helpers.configs import setter


# -- fixtures: one tiny classifier and one tiny encoder, built once -------------------------------
@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    from tests.helpers.fixture_cache import fixture_path

    return fixture_path("tiny_encoder", tmp_path_factory.mktemp("enc"))


def _rewrite_config(source: Path, target: Path, edit: Callable[[dict], None]) -> Path:
    """Copy a checkpoint with its config edited (weights unchanged)."""
    from safetensors.torch import load_file

    config = read_checkpoint_config(source)
    edit(config)
    model = build_model(read_checkpoint_config(source)["model"])
    model.load_state_dict(load_file(str(source)))
    save_checkpoint(target, model, config)
    return target


def _raw_metadata_checkpoint(source: Path, target: Path, edit: Callable[[dict], None]) -> Path:
    """Copy a checkpoint with its JSON config edited in the header bytes (no validation on the way)."""
    data = source.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    config = json.loads(header["__metadata__"]["rrcm_config"])
    edit(config)
    header["__metadata__"]["rrcm_config"] = json.dumps(config)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    target.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])
    return target


def _flip_weight_bit(source: Path, target: Path) -> Path:
    data = bytearray(source.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    data[8 + length + 5] ^= 0x10  # inside the first tensor's bytes
    target.write_bytes(bytes(data))
    return target


@dataclass
class Case:
    """argv with {ckpt} {enc} {in} {out} placeholders; `setup(inputs, outputs, fixtures)` makes files."""

    id: str
    argv: list[str]
    pattern: str
    setup: Callable | None = None
    fixtures: tuple[str, ...] = field(default_factory=tuple)


def certify(*extra, setup=None, pattern, id, ckpt="{ckpt}", out="{out}/log.tsv"):
    return Case(id, ["certify", "--checkpoint", ckpt, "--n0", "10", "--n", "100", "--out", out, "--quiet",
                     *extra], pattern, setup)


def _existing_log(text: str, config: dict | None = None):
    def setup(inputs, outputs, fx):
        (outputs / "log.tsv").write_text(text)
        if config is not None:
            (outputs / "log.tsv.json").write_text(json.dumps(config))
    return setup


def _completed_then_truncated(inputs, outputs, fx):
    """A finished run whose log then lost rows: its .json still says complete."""
    code = main(["certify", "--checkpoint", str(fx["ckpt"]), "--precision", "fp32", "--n0", "10", "--n", "100",
                 "--skip", "100",
                 "--out", str(outputs / "log.tsv"), "--quiet"])
    assert code == 0
    lines = (outputs / "log.tsv").read_text().splitlines(keepends=True)
    (outputs / "log.tsv").write_text("".join(lines[:-1]))


def _ckpt_variant(name, edit=None, raw=None, flip=False, source="ckpt"):
    def setup(inputs, outputs, fx):
        target = inputs / name
        if flip:
            _flip_weight_bit(fx[source], target)
        elif raw is not None:
            _raw_metadata_checkpoint(fx[source], target, raw)
        else:
            _rewrite_config(fx[source], target, edit)
    return setup


_set = setter


def _write(name: str, content: bytes | str):
    def setup(inputs, outputs, fx):
        target = inputs / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content if isinstance(content, bytes) else content.encode())
    return setup


def _mkdir(name: str):
    def setup(inputs, outputs, fx):
        (inputs / name).mkdir(parents=True)
    return setup


def _imagefolder_without_classes(inputs, outputs, fx):
    (inputs / "imgs" / "train").mkdir(parents=True)
    (inputs / "imgs" / "train" / "stray.txt").write_text("not an image")


COHEN_HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"

CASES = [
    # -- certify: the output path ------------------------------------------------------------------
    certify(out="{out}", pattern=r"is a folder; give a file name", id="certify-out-is-a-folder"),
    certify(setup=_existing_log("my notes\n"), pattern=r"already exists but has no log\.tsv\.json",
            id="certify-out-exists-without-json"),
    certify(setup=_existing_log(COHEN_HEADER, {"settings": {"n": 5}}), pattern=r"started with different",
            id="certify-out-exists-other-settings"),
    Case("certify-out-complete-but-rows-missing",
         ["certify", "--checkpoint", "{ckpt}", "--precision", "fp32", "--n0", "10", "--n", "100", "--skip", "100",
          "--out",
          "{out}/log.tsv", "--quiet"], r"holds 4 rows but this run selects 5", _completed_then_truncated),
    # -- certify: options ---------------------------------------------------------------------------
    certify("--device", "cuda", pattern=r"sees no CUDA GPU; use --device cpu", id="certify-device-cuda")
    if not torch.cuda.is_available() else None,
    certify("--device", "tpu", pattern=r"unknown device 'tpu'", id="certify-device-tpu"),
    certify("--skip", "0", pattern=r"--skip must be at least 1", id="certify-skip-0"),
    certify("--n0", "0", pattern=r"n0", id="certify-n0-0"),
    certify("--max-index", "0", pattern=r"--max-index must be a positive index bound or -1", id="certify-max-index-0"),
    certify("--max-index", "-5", pattern=r"--max-index must be", id="certify-max-index-negative"),
    certify("--sigma", "nan", pattern=r"sigma must be a positive", id="certify-sigma-nan"),
    certify("--data-root", "{in}/nothing-here", "--data", "cifar10", pattern=r"nothing-here",
            id="certify-data-root-missing"),
    certify("--split", "val", pattern=r"split", id="certify-split-val"),
    # -- certify: the checkpoint --------------------------------------------------------------------
    certify(ckpt="{in}", pattern=r"checkpoint", id="certify-checkpoint-is-a-folder"),
    certify(ckpt="{enc}", pattern=r"pre-trained rRCM encoder, not a classifier", id="certify-encoder"),
    certify(ckpt="{in}/classes.safetensors", setup=_ckpt_variant("classes.safetensors", _set(
        "data.classes", ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])),
        pattern=r"trained on classes zero, one.*--ignore-class-names", id="certify-class-names-differ"),
    certify(ckpt="{in}/order.safetensors", setup=_ckpt_variant("order.safetensors", _set(
        "data.classes", ["1", "0", "2", "3", "4", "5", "6", "7", "8", "9"])),
        pattern=r"another order", id="certify-class-order-differs"),
    certify(ckpt="{in}/s.safetensors", setup=_ckpt_variant("s.safetensors", raw=_set("sigma", "abc")),
            pattern=r"s\.safetensors.*sigma", id="certify-ckpt-sigma-string"),
    certify(ckpt="{in}/s.safetensors", setup=_ckpt_variant("s.safetensors", raw=_set("sigma", [0.5])),
            pattern=r"s\.safetensors.*sigma", id="certify-ckpt-sigma-list"),
    certify(ckpt="{in}/m.safetensors", setup=_ckpt_variant("m.safetensors", raw=_set("model.arch", 5)),
            pattern=r"m\.safetensors.*(arch|model)", id="certify-ckpt-arch-int"),
    certify(ckpt="{in}/m.safetensors", setup=_ckpt_variant("m.safetensors", raw=_set("model", "lenet5")),
            pattern=r"m\.safetensors.*model", id="certify-ckpt-model-string"),
    certify(ckpt="{in}/flip.safetensors", setup=_ckpt_variant("flip.safetensors", flip=True),
            pattern=r"flip\.safetensors", id="certify-ckpt-bit-flipped"),
    certify(ckpt="{in}/junk.safetensors", setup=_write("junk.safetensors", b"\x10" + b"\x00" * 7 + b"{}"),
            pattern=r"junk\.safetensors", id="certify-ckpt-junk"),
    # -- train / finetune ---------------------------------------------------------------------------
    Case("train-batch-size-0", ["train", "--batch-size", "0", "--out", "{out}/run"], r"batch-size must be at least 1"),
    Case("train-lr-negative", ["train", "--lr", "-1", "--out", "{out}/run"], r"learning rate must be positive"),
    Case("train-precision-fp8", ["train", "--precision", "fp8", "--out", "{out}/run"], r"precision"),
    Case("train-device-tpu", ["train", "--device", "tpu", "--epochs", "1", "--out", "{out}/run"],
         r"unknown device 'tpu'"),
    Case("train-arch-option-no-equals", ["train", "--arch-option", "width", "--out", "{out}/run"], r"KEY=VALUE"),
    Case("train-preset-bad-yaml", ["train", "--preset", "{in}/p.yaml", "--out", "{out}/run"], r"not valid YAML",
         _write("p.yaml", "epochs: [1,\n")),
    Case("train-imagefolder-no-classes", ["train", "--data", "imagefolder", "--data-root", "{in}/imgs", "--out",
                                          "{out}/run"], r"class folders|no image", _imagefolder_without_classes),
    Case("train-out-is-a-file", ["train", "--epochs", "1", "--out", "{in}/afile"], r"afile",
         _write("afile", "x")),
    Case("finetune-pretrained-missing", ["finetune", "--pretrained", "{in}/none.safetensors", "--sigma", "0.25",
                                         "--out", "{out}/run"], r"none\.safetensors"),
    Case("finetune-pretrained-is-a-classifier", ["finetune", "--pretrained", "{ckpt}", "--sigma", "0.25", "--out",
                                                 "{out}/run"], r"not a pre-trained rRCM encoder"),
    Case("finetune-class-names-differ", ["finetune", "--pretrained", "{in}/enc.safetensors", "--sigma", "0.25",
                                         "--epochs", "1", "--out", "{out}/run"], r"trained on classes a, b, c",
         _ckpt_variant("enc.safetensors", raw=_set("data.classes", list("abcdefghij")), source="enc")),
    Case("finetune-layer-decay-2", ["finetune", "--layer-decay", "2", "--sigma", "0.25", "--out", "{out}/run"],
         r"layer decay"),
    # -- pretrain -----------------------------------------------------------------------------------
    Case("pretrain-batch-size-1", ["pretrain", "--batch-size", "1", "--out", "{out}/run"], r"at least 2"),
    Case("pretrain-batch-larger-than-data", ["pretrain", "--batch-size", "4000", "--steps", "1", "--out", "{out}/run"],
         r"--batch-size 4000 is larger than the 1297 training images"),
    Case("pretrain-steps-0", ["pretrain", "--steps", "0", "--out", "{out}/run"], r"steps must be at least 1"),
    Case("pretrain-ema-schedule", ["pretrain", "--ema-schedule", "cosine", "--out", "{out}/run"], r"EMA schedule"),
    Case("pretrain-temperature-0", ["pretrain", "--temperature", "0", "--out", "{out}/run"], r"temperature"),
    Case("pretrain-device-cuda", ["pretrain", "--device", "cuda", "--steps", "1", "--out", "{out}/run"],
         r"sees no CUDA GPU") if not torch.cuda.is_available() else None,
    Case("pretrain-mnist-no-root", ["pretrain", "--data", "mnist", "--data-root", "{in}/nope", "--out", "{out}/run"],
         r"nope"),
    # -- train-denoiser -----------------------------------------------------------------------------
    Case("denoiser-size", ["train-denoiser", "--size", "huge", "--out", "{out}/run"], r"huge"),
    Case("denoiser-epochs-0", ["train-denoiser", "--epochs", "0", "--out", "{out}/run"], r"epochs"),
    Case("denoiser-beta-schedule", ["train-denoiser", "--beta-schedule", "cosine-ish", "--out", "{out}/run"],
         r"cosine-ish|schedule"),
    Case("denoiser-cifar-no-root", ["train-denoiser", "--data", "cifar10", "--data-root", "{in}/nope", "--out",
                                    "{out}/run"], r"nope"),
    # -- dds assemble -------------------------------------------------------------------------------
    Case("dds-denoiser-missing", ["dds", "assemble", "--denoiser", "{in}/d.safetensors", "--classifier", "{ckpt}",
                                  "--sigma", "0.25", "--out", "{out}/m.safetensors"], r"d\.safetensors"),
    Case("dds-denoiser-is-a-classifier", ["dds", "assemble", "--denoiser", "{ckpt}", "--classifier", "{ckpt}",
                                          "--sigma", "0.25", "--out", "{out}/m.safetensors"], r"denoiser"),
    Case("dds-classifier-is-an-encoder", ["dds", "assemble", "--denoiser", "{ckpt}", "--classifier", "{enc}",
                                          "--sigma", "0.25", "--out", "{out}/m.safetensors"], r"not a classifier"),
    Case("dds-sigma-0", ["dds", "assemble", "--denoiser", "{ckpt}", "--classifier", "{ckpt}", "--sigma", "0",
                         "--out", "{out}/m.safetensors"], r"sigma must be a positive"),
    Case("dds-steps-0", ["dds", "assemble", "--denoiser", "{ckpt}", "--classifier", "{ckpt}", "--sigma", "0.25",
                         "--steps", "0", "--out", "{out}/m.safetensors"], r"--steps must be at least 1"),
    Case("dds-no-out", ["dds", "assemble", "--denoiser", "{ckpt}", "--classifier", "{ckpt}", "--sigma", "0.25"],
         r"give --out"),
    # -- report -------------------------------------------------------------------------------------
    Case("report-log-missing", ["report", "{in}/none.tsv", "--out", "{out}/t.txt"], r"none\.tsv"),
    Case("report-log-is-a-folder", ["report", "{in}", "--out", "{out}/t.txt"], r"folder|directory|{in}"),
    Case("report-log-empty", ["report", "{in}/e.tsv", "--out", "{out}/t.txt"], r"e\.tsv", _write("e.tsv", "")),
    Case("report-log-bad-value", ["report", "{in}/b.tsv", "--out", "{out}/t.txt"], r"b\.tsv:2: column .radius.",
         _write("b.tsv", COHEN_HEADER + "0\t1\t1\tfar\t1\t0:00:01\n")),
    Case("report-radii-not-numbers", ["report", "{in}/g.tsv", "--radii", "a,b", "--out", "{out}/t.txt"], r"--radii",
         _write("g.tsv", COHEN_HEADER + "0\t1\t1\t0.5\t1\t0:00:01\n")),
    Case("report-every-0", ["report", "{in}/g.tsv", "--every", "0", "--out", "{out}/t.txt"], r"--every",
         _write("g.tsv", COHEN_HEADER + "0\t1\t1\t0.5\t1\t0:00:01\n")),
    Case("report-format", ["report", "{in}/g.tsv", "--format", "xml"], r"invalid choice: 'xml'"),
    # -- bench cost ---------------------------------------------------------------------------------
    Case("bench-batch-size-0", ["bench", "cost", "--no-paper", "--small", "--batch-size", "0"], r"batch"),
    Case("bench-precision-fp8", ["bench", "cost", "--no-paper", "--small", "--precision", "fp8"], r"precision"),
    Case("bench-device-tpu", ["bench", "cost", "--no-paper", "--small", "--device", "tpu"], r"--device"),
    Case("bench-checkpoint-missing", ["bench", "cost", "--no-paper", "--checkpoint", "x={in}/none.safetensors"],
         r"none\.safetensors"),
    Case("bench-checkpoint-empty-label", ["bench", "cost", "--no-paper", "--checkpoint", "={ckpt}"], r"LABEL=PATH"),
    # -- demo ---------------------------------------------------------------------------------------
    Case("demo-device-tpu", ["demo", "--quick", "--device", "tpu", "--out", "{out}/demo"], r"unknown device 'tpu'"),
]
CASES = [case for case in CASES if case is not None]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root with its kind, permission bits and content digest."""
    state = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_dir():
            state[rel] = ("dir", path.stat().st_mode & 0o777)
        else:
            state[rel] = ("file", path.stat().st_mode & 0o777, hashlib.sha256(path.read_bytes()).hexdigest())
    return state


@pytest.fixture(scope="module")
def fixture_paths(tiny_checkpoint, tiny_encoder):
    return {"ckpt": tiny_checkpoint, "enc": tiny_encoder}


def test_the_table_has_at_least_40_cases_over_every_command():
    commands = {case.argv[0] if case.argv[0] not in ("dds", "bench") else " ".join(case.argv[:2]) for case in CASES}
    assert len(CASES) >= 40
    assert commands >= {"certify", "train", "finetune", "pretrain", "train-denoiser", "dds assemble", "report",
                        "bench cost", "demo"}
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, fixture_paths, tmp_path, monkeypatch, capsys):
    workspace = tmp_path / "ws"
    inputs, outputs = workspace / "in", workspace / "out"
    inputs.mkdir(parents=True)
    outputs.mkdir()
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    if case.setup is not None:
        case.setup(inputs, outputs, fixture_paths)
        capsys.readouterr()
    fill = {"ckpt": str(fixture_paths["ckpt"]), "enc": str(fixture_paths["enc"]), "in": str(inputs),
            "out": str(outputs)}
    argv = [arg.format(**fill) for arg in case.argv]
    pattern = case.pattern.replace("{in}", re.escape(str(inputs)))
    before = snapshot(workspace)

    code = main(argv)
    _, err = capsys.readouterr()

    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("rrcm: error: "), lines[0]
    assert re.search(pattern, lines[0]), lines[0]
    assert snapshot(workspace) == before


def test_ignore_class_names_certifies_what_the_check_refuses(fixture_paths, tmp_path, capsys):
    renamed = _rewrite_config(fixture_paths["ckpt"], tmp_path / "renamed.safetensors",
                              _set("data.classes", [f"c{i}" for i in range(10)]))
    argv = ["certify", "--checkpoint", str(renamed), "--precision", "fp32", "--n0", "10", "--n", "100", "--skip",
            "100", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "refused.tsv")]) == 2
    assert main([*argv, "--out", str(tmp_path / "log.tsv"), "--ignore-class-names"]) == 0
    assert len((tmp_path / "log.tsv").read_text().splitlines()) == 1 + 5
