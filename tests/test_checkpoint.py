"""What rrcm writes: checkpoint integrity (SHA-256 of the weights), strict loading, the config's types,
file permissions, failed runs that leave nothing behind, and OS errors that say what failed where."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rrcm.checkpoint import CONFIG_KEY, load_checkpoint, load_state, read_checkpoint_config, save_checkpoint, save_state
from rrcm.cli import main
from rrcm.errors import UserError
from rrcm.fileio import write_json_atomic, write_text_atomic
from rrcm.models import build_model, model_config
from tests.helpers.configs import setter

WEIGHTS_DIGEST_KEY = "rrcm_weights_sha256"  # the metadata key documented in rrcm.checkpoint


def tiny_model():
    cfg = model_config("lenet5", num_classes=10, in_channels=1, image_size=8, mean=[0.3], std=[0.4])
    return build_model(cfg).eval(), cfg


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    model, cfg = tiny_model()
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, {"model": cfg, "sigma": 0.5, "kind": "classifier"})
    return path


def header(path: Path) -> tuple[int, dict]:
    """(header length, header) of a safetensors file: 8 bytes little-endian length, then JSON."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return length, json.loads(data[8 : 8 + length])


def flip_bit(source: Path, target: Path, offset_in_data: int = 5) -> Path:
    """Copy `source` with one bit flipped inside the tensor data (after the header)."""
    data = bytearray(source.read_bytes())
    length, _ = header(source)
    data[8 + length + offset_in_data] ^= 0x10
    target.write_bytes(bytes(data))
    return target


def digest_from_file(path: Path) -> str:
    """The documented digest, computed independently from the file's own bytes and header."""
    data = path.read_bytes()
    length, head = header(path)
    start = 8 + length
    entries = {k: v for k, v in head.items() if k != "__metadata__"}

    def field(raw: bytes) -> bytes:
        return struct.pack("<Q", len(raw)) + raw

    h = hashlib.sha256(struct.pack("<Q", len(entries)))
    for name in sorted(entries):
        entry = entries[name]
        begin, end = entry["data_offsets"]
        h.update(field(name.encode("utf-8")))
        h.update(field(entry["dtype"].encode("ascii")))
        h.update(struct.pack("<Q", len(entry["shape"])) + b"".join(struct.pack("<Q", d) for d in entry["shape"]))
        h.update(field(data[start + begin : start + end]))
    return h.hexdigest()


def rewrite(source: Path, target: Path, *, tensors=None, metadata=None) -> Path:
    """Copy a safetensors file with its tensors and/or metadata edited (no rrcm validation on the way)."""
    from safetensors import safe_open

    with safe_open(str(source), framework="pt") as f:
        old_metadata = dict(f.metadata() or {})
    state = load_file(str(source))
    save_file(tensors(state) if tensors else state, str(target),
              metadata=metadata(old_metadata) if metadata else old_metadata)
    return target


def with_digest(source: Path, target: Path) -> Path:
    """Copy `source` with the digest of its own tensors recorded, as rrcm records it."""
    return rewrite(source, target, metadata=lambda m: {**m, WEIGHTS_DIGEST_KEY: digest_from_file(source)})


# -- integrity: a SHA-256 of the weights in the metadata ------------------------------------------

def test_checkpoint_records_the_documented_weights_digest(checkpoint):
    _, head = header(checkpoint)
    recorded = head["__metadata__"][WEIGHTS_DIGEST_KEY]
    assert len(recorded) == 64 and recorded == digest_from_file(checkpoint)


def test_a_flipped_bit_in_a_checkpoint_is_refused_naming_the_file(checkpoint, tmp_path):
    flipped = flip_bit(checkpoint, tmp_path / "flipped.safetensors")
    with pytest.raises(UserError, match=r"flipped\.safetensors.*SHA-256") as info:
        load_checkpoint(flipped)
    assert "\n" not in str(info.value)
    # the last byte of the data region too (another tensor)
    last = flip_bit(checkpoint, tmp_path / "last.safetensors",
                    offset_in_data=checkpoint.stat().st_size - 8 - header(checkpoint)[0] - 1)
    with pytest.raises(UserError, match=r"last\.safetensors.*SHA-256"):
        load_checkpoint(last)


def test_a_flipped_bit_in_a_training_state_is_refused_naming_the_file(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = tmp_path / "train_state.safetensors"
    save_state(path, {"model": model.state_dict(), "step": 3})
    assert header(path)[1]["__metadata__"][WEIGHTS_DIGEST_KEY] == digest_from_file(path)
    flipped = flip_bit(path, tmp_path / "state_flipped.safetensors")
    with pytest.raises(UserError, match=r"state_flipped\.safetensors.*SHA-256.*delete it"):
        load_state(flipped)


def test_the_digest_covers_every_dtype_and_shape_as_documented(tmp_path):
    tensors = {"f32": torch.randn(2, 3), "bf16": torch.randn(4).bfloat16(), "f16": torch.randn(1, 1, 2).half(),
               "i64": torch.arange(5), "u8": torch.ByteTensor([1, 2, 255]), "bool": torch.tensor([True, False]),
               "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 4), "é名": torch.ones(2)}
    save_state(tmp_path / "s.safetensors", {"tensors": tensors, "rng": torch.get_rng_state()})
    assert header(tmp_path / "s.safetensors")[1]["__metadata__"][WEIGHTS_DIGEST_KEY] == \
        digest_from_file(tmp_path / "s.safetensors")
    back = load_state(tmp_path / "s.safetensors")["tensors"]
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in tensors.items())


def test_files_without_a_digest_still_load(checkpoint, tmp_path):
    # Written before rrcm recorded the digest: nothing to check them against, so they load as before.
    old = rewrite(checkpoint, tmp_path / "old.safetensors",
                  metadata=lambda m: {k: v for k, v in m.items() if k != WEIGHTS_DIGEST_KEY})
    old_flipped = flip_bit(old, tmp_path / "old_flipped.safetensors")
    model, config = load_checkpoint(old_flipped)
    assert config["sigma"] == 0.5
    original = load_file(str(old))
    assert any(not torch.equal(v, original[k]) for k, v in model.state_dict().items())

    state_path = tmp_path / "s.safetensors"
    save_state(state_path, {"w": torch.arange(4.0), "step": 1})
    old_state = rewrite(state_path, tmp_path / "old_state.safetensors",
                        metadata=lambda m: {k: v for k, v in m.items() if k != WEIGHTS_DIGEST_KEY})
    assert load_state(flip_bit(old_state, tmp_path / "old_state_flipped.safetensors"))["step"] == 1


def test_a_malformed_digest_is_refused(checkpoint, tmp_path):
    bad = rewrite(checkpoint, tmp_path / "bad.safetensors", metadata=lambda m: {**m, WEIGHTS_DIGEST_KEY: "xyz"})
    with pytest.raises(UserError, match=r"bad\.safetensors.*SHA-256"):
        load_checkpoint(bad)


def test_the_same_weights_and_config_give_the_same_bytes(tmp_path):
    # safetensors writes its metadata in hash-map order: with the digest beside the config, two saves of
    # the same model would differ in their header (and a resumed run's files from an uninterrupted run's)
    import subprocess
    import sys

    script = ("import sys, torch; from rrcm.checkpoint import save_checkpoint, save_state; "
              "from rrcm.models import build_model, model_config; torch.manual_seed(0); "
              "cfg = model_config('lenet5', num_classes=10, in_channels=1, image_size=8, mean=[0.3], std=[0.4]); "
              "save_checkpoint(sys.argv[1] + '.safetensors', build_model(cfg), {'model': cfg, 'sigma': 0.5}); "
              "save_state(sys.argv[1] + '.state', {'w': torch.arange(3.0), 'step': 1})")
    for i in range(4):  # separate processes: each has its own hash seed
        subprocess.run([sys.executable, "-c", script, str(tmp_path / str(i))], check=True)
    for suffix in (".safetensors", ".state"):
        contents = {(tmp_path / f"{i}{suffix}").read_bytes() for i in range(4)}
        assert len(contents) == 1, suffix
        _, head = header(tmp_path / f"0{suffix}")
        assert list(head["__metadata__"]) == sorted(head["__metadata__"])


# -- strict loading: no tensor missing, none extra ------------------------------------------------

def _drop_first(state):
    return dict(list(state.items())[1:])


def _add_extra(state):
    return {**state, "extra.weight": torch.zeros(3)}


@pytest.mark.parametrize("edit, words", [(_drop_first, "missing"), (_add_extra, "unexpected")],
                         ids=["missing-tensor", "extra-tensor"])
def test_a_checkpoint_missing_a_tensor_or_with_an_extra_one_is_refused(edit, words, checkpoint, tmp_path):
    # without a digest (an old file), and with one that matches the edited tensors (as if written that way)
    no_digest = rewrite(checkpoint, tmp_path / "nodigest.safetensors", tensors=edit,
                        metadata=lambda m: {k: v for k, v in m.items() if k != WEIGHTS_DIGEST_KEY})
    edited = with_digest(no_digest, tmp_path / "edited.safetensors")
    for path in (edited, no_digest):
        with pytest.raises(UserError, match=rf"(?i){path.name}.*{words}"):
            load_checkpoint(path)


@pytest.mark.parametrize("edit, words", [(_drop_first, "missing"), (_add_extra, "unexpected")],
                         ids=["missing-tensor", "extra-tensor"])
def test_a_training_state_missing_a_tensor_or_with_an_extra_one_is_refused(edit, words, tmp_path):
    path = tmp_path / "s.safetensors"
    save_state(path, {"model": torch.nn.Linear(3, 2).state_dict(), "step": 3})
    no_digest = rewrite(path, tmp_path / "nodigest.safetensors", tensors=edit)
    edited = with_digest(no_digest, tmp_path / "edited.safetensors")
    with pytest.raises(UserError, match=rf"edited\.safetensors.*{words}.*delete it"):
        load_state(edited)


# -- the config's types -------------------------------------------------------------------------

_set = setter


POSITIVE_FINITE = "a positive finite number (or null for a classifier without σ)"
POSITIVE_INTEGER = "a positive integer"
KNOWN_ARCHS = "cifar_resnet, cifar_resnet110, cifar_resnet20, ddpm_unet, dds, lenet, lenet5, rrcm_vit, vit"

# (field, value, what the message says it must be, how it shows the value)
BAD_CONFIGS = [
    ("sigma", "abc", POSITIVE_FINITE, '"abc"'), ("sigma", [1], POSITIVE_FINITE, "[1]"),
    ("sigma", -1, POSITIVE_FINITE, "-1"), ("sigma", 0, POSITIVE_FINITE, "0"),
    ("sigma", math.inf, POSITIVE_FINITE, "Infinity"), ("sigma", math.nan, POSITIVE_FINITE, "NaN"),
    ("sigma", True, POSITIVE_FINITE, "true"), ("model", "x", "an object with an 'arch'", '"x"'),
    ("model", [1], "an object with an 'arch'", "[1]"), ("model.arch", 5, "a string", "5"),
    ("model.arch", "resnet9000", f"one of {KNOWN_ARCHS}", '"resnet9000"'),
    ("model.num_classes", "10", POSITIVE_INTEGER, '"10"'), ("model.image_size", 0, POSITIVE_INTEGER, "0"),
    ("model.in_channels", 1.5, POSITIVE_INTEGER, "1.5"), ("model.num_classes", True, POSITIVE_INTEGER, "true"),
    ("kind", 3, "a string", "3"), ("data", "digits", "an object", '"digits"'), ("data.name", 5, "a string", "5"),
    ("data.classes", "0123456789", "a list of class names (strings)", '"0123456789"'),
    ("data.classes", [0, 1], "a list of class names (strings)", "[0, 1]"),
    ("data.classes", ["0", 1], "a list of class names (strings)", '["0", 1]'),
    ("data.num_classes", "10", POSITIVE_INTEGER, '"10"'), ("data.image_size", -8, POSITIVE_INTEGER, "-8"),
    ("data.channels", True, POSITIVE_INTEGER, "true"), ("data.in_channels", "1", POSITIVE_INTEGER, '"1"'),
    ("data.mean", "0.5", "a list of finite numbers", '"0.5"'),
    ("data.std", [0.2, "x"], "a list of finite numbers", '[0.2, "x"]'),
    ("data.std", [0.2, math.inf], "a list of finite numbers", "[0.2, Infinity]"),
    # a value shown in up to 60 characters; a longer one cut to 57 and "..."
    ("data.name", ["n" * 56], "a string", f'["{"n" * 56}"]'),  # 60 characters
    ("data.name", ["n" * 57], "a string", f'["{"n" * 55}...'),  # 61
]

FULL_DATA = {"name": "digits", "classes": [str(i) for i in range(10)], "num_classes": 10, "image_size": 8,
             "channels": 1, "in_channels": 1, "mean": [0.3], "std": [0.4]}


def edit_config(checkpoint: Path, target: Path, edit) -> Path:
    """Copy `checkpoint` with its config edited by `edit` (no rrcm validation on the way)."""
    def metadata(m):
        config = json.loads(m[CONFIG_KEY])
        edit(config)
        return {**m, CONFIG_KEY: json.dumps(config)}

    return rewrite(checkpoint, target, metadata=metadata)


@pytest.mark.parametrize("field, value, must, shown", BAD_CONFIGS, ids=[f"{f}={v!r}"[:40] for f, v, *_ in BAD_CONFIGS])
def test_a_config_field_of_the_wrong_type_is_one_line_naming_the_file_and_field(field, value, must, shown, checkpoint,
                                                                                tmp_path):
    def edit(config):
        config["data"] = dict(FULL_DATA)
        _set(field, value)(config)

    bad = edit_config(checkpoint, tmp_path / "bad.safetensors", edit)
    with pytest.raises(UserError) as info:
        read_checkpoint_config(bad)
    assert str(info.value) == (f"checkpoint {bad} has a bad config: field '{field}' must be {must}, got {shown}; "
                               "the file was edited or damaged: re-train or re-save it")


def test_a_model_without_arch_is_refused(checkpoint, tmp_path):
    def metadata(m):
        config = json.loads(m[CONFIG_KEY])
        del config["model"]["arch"]
        return {**m, CONFIG_KEY: json.dumps(config)}

    bad = rewrite(checkpoint, tmp_path / "bad.safetensors", metadata=metadata)
    with pytest.raises(UserError) as info:
        read_checkpoint_config(bad)
    assert str(info.value) == (f"checkpoint {bad} has a bad config: field 'model.arch' must be present (the "
                               "architecture's name), got null; the file was edited or damaged: re-train or re-save it")


def test_valid_configs_still_load(checkpoint, tmp_path):
    # a clean classifier records sigma null; data may be absent (old files) or recorded as null; each
    # count may be 1, and each optional field may be absent
    edits = {"clean": _set("sigma", None), "integer-sigma": _set("sigma", 1), "no-kind": lambda c: c.pop("kind"),
             "full-data": _set("data", dict(FULL_DATA)), "data-without-optional-fields": _set("data", {}),
             "ones": _set("data", {"num_classes": 1, "image_size": 1, "channels": 1, "in_channels": 1}),
             "null-data": _set("data", None)}
    for name, edit in edits.items():
        config = read_checkpoint_config(edit_config(checkpoint, tmp_path / f"{name}.safetensors", edit))
        expected = {"model": tiny_model()[1], "sigma": 0.5, "kind": "classifier"}
        edit(expected)
        if name == "null-data":
            del expected["data"]  # unknown: as if absent
        assert config == expected, name


def test_a_checkpoint_that_is_not_one_is_one_line_saying_why(checkpoint, tmp_path):
    def refused(path: Path) -> str:
        with pytest.raises(UserError) as info:
            read_checkpoint_config(path)
        return str(info.value)

    missing = tmp_path / "nope.safetensors"
    assert refused(missing) == f"checkpoint not found: {missing} (give the .safetensors file written by `rrcm train`)"
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"hello")
    assert refused(garbage) == (f"cannot read checkpoint {garbage}: corrupt, truncated or not a safetensors file "
                                "(Error while deserializing header: header too small); point to the model.safetensors "
                                "written by rrcm, or copy it again")
    foreign = rewrite(checkpoint, tmp_path / "foreign.safetensors", metadata=lambda m: {"format": "pt"})
    assert refused(foreign) == (f"checkpoint {foreign} has no rrcm config in its metadata; "
                                "only checkpoints written by rrcm can be loaded")
    bare = rewrite(checkpoint, tmp_path / "bare.safetensors", metadata=lambda m: None)
    assert refused(bare) == (f"checkpoint {bare} has no rrcm config in its metadata; "
                             "only checkpoints written by rrcm can be loaded")
    broken = rewrite(checkpoint, tmp_path / "broken.safetensors", metadata=lambda m: {**m, CONFIG_KEY: "{model"})
    assert refused(broken) == f"checkpoint {broken} has a corrupt config; re-train or re-save it"
    for name, config in [("list", [1]), ("no-model", {"sigma": 0.5})]:
        path = rewrite(checkpoint, tmp_path / f"{name}.safetensors",
                       metadata=lambda m, config=config: {**m, CONFIG_KEY: json.dumps(config)})
        assert refused(path) == f"checkpoint {path} has no model config; re-train or re-save it"


@pytest.mark.parametrize("field, value", [("sigma", "abc"), ("sigma", [1]), ("sigma", -1), ("model", {"arch": 5}),
                                          ("model", "x")])
def test_certify_with_a_bad_config_is_one_line_exit_2(field, value, checkpoint, tmp_path, capsys):
    def metadata(m):
        config = json.loads(m[CONFIG_KEY])
        config[field] = value
        return {**m, CONFIG_KEY: json.dumps(config)}

    bad = rewrite(checkpoint, tmp_path / "bad.safetensors", metadata=metadata)
    code = main(["certify", "--checkpoint", str(bad), "--n0", "10", "--n", "100", "--out", str(tmp_path / "log.tsv"),
                 "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("rrcm: error: "), err
    assert "bad.safetensors" in err and re.search(rf"'{field}[.']", err), err
    assert not (tmp_path / "log.tsv").exists()


def test_denoiser_checkpoints_are_a_known_arch():
    from rrcm.baselines.denoiser import DENOISER_ARCH
    from rrcm.checkpoint import _known_archs

    assert DENOISER_ARCH in _known_archs()


# -- permissions: 0o666 & ~umask for every file rrcm writes -----------------------------------------

@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def test_every_written_file_gets_the_umask_permissions(umask, tmp_path):
    model, cfg = tiny_model()
    save_checkpoint(tmp_path / "m.safetensors", model, {"model": cfg, "sigma": 0.5})
    save_state(tmp_path / "s.safetensors", {"w": torch.zeros(2), "step": 0})
    write_json_atomic(tmp_path / "c.json", {"a": 1})
    write_text_atomic(tmp_path / "t.txt", "x\n")
    assert main(["certify", "--checkpoint", str(tmp_path / "m.safetensors"), "--data", "digits", "--n0", "10",
                 "--n", "100", "--skip", "300", "--out", str(tmp_path / "log.tsv"), "--quiet"]) == 0
    expected = 0o666 & ~umask
    for name in ("m.safetensors", "s.safetensors", "c.json", "t.txt", "log.tsv", "log.tsv.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == expected, (name, oct((tmp_path / name).stat().st_mode))


def test_a_training_run_writes_files_with_the_umask_permissions(umask, tmp_path):
    from rrcm.train.config import TrainConfig
    from rrcm.train.classifier import train_classifier

    cfg = TrainConfig(data="digits", arch="lenet5", sigma=0.25, epochs=1, batch_size=256, lr=0.05, device="cpu")
    train_classifier(cfg, tmp_path / "run", progress=False)
    files = sorted(p for p in (tmp_path / "run").iterdir() if p.is_file())
    assert {p.name for p in files} >= {"config.json", "metrics.csv", "model.safetensors"}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(0o666 & ~umask) for p in files}


# -- a failed run leaves the output folder as it found it -------------------------------------------

def _fail(*args, **kwargs):
    raise UserError("the first step failed")


def _train(out):
    from rrcm.train.config import TrainConfig
    from rrcm.train.classifier import train_classifier

    train_classifier(TrainConfig(data="digits", arch="lenet5", sigma=0.25, epochs=1, batch_size=256, device="cpu"),
                     out, progress=False)


def _pretrain(out):
    from rrcm.train.pretrain import PretrainConfig, pretrain

    pretrain(PretrainConfig(data="digits", arch_options={"width": 32, "depth": 1, "heads": 2, "patch_size": 4},
                            steps=2, batch_size=16, warmup_steps=1, projector_hidden=32, projector_dim=16, blur=False,
                            device="cpu"), out, progress=False)


def _train_denoiser(out):
    from rrcm.baselines.denoiser import DenoiserConfig, train_denoiser

    train_denoiser(DenoiserConfig(data="digits", epochs=1, batch_size=256, device="cpu",
                                  arch_options={"block_out_channels": [16, 32], "norm_num_groups": 8}),
                   out, progress=False)


RUNS = {"train": (_train, "rrcm.train.objectives.gaussian_objective"),
        "pretrain": (_pretrain, "rrcm.train.pretrain.make_batch"),
        "train-denoiser": (_train_denoiser, "rrcm.baselines.denoiser.DenoiserTask.step")}


@pytest.mark.parametrize("existing", [False, True], ids=["new-folder", "existing-empty-folder"])
@pytest.mark.parametrize("run", list(RUNS))
def test_a_run_that_fails_at_its_first_step_leaves_nothing(run, existing, tmp_path, monkeypatch):
    start, first_step = RUNS[run]
    monkeypatch.setattr(first_step, _fail)
    out = tmp_path / "out"
    if existing:
        out.mkdir()
    with pytest.raises(UserError, match="the first step failed"):
        start(out)
    assert sorted(p.name for p in tmp_path.rglob("*")) == (["out"] if existing else [])


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("enc") / "pre"
    _pretrain(out)
    return out / "encoder.safetensors"


def _drop_a_block(state):
    return {k: v for k, v in state.items() if not k.startswith("encoder.blocks.0.attn")}


@pytest.mark.parametrize("damage", ["bit-flipped", "tensors-missing"])
def test_finetuning_from_a_damaged_encoder_is_one_line_and_leaves_no_folder(damage, encoder, tmp_path, capsys):
    # Real bad input that is found only when the model is built (after the run config is resolved and the
    # output folder checked): before, the first trained on without a word and the second left config.json.
    if damage == "bit-flipped":
        bad = flip_bit(encoder, tmp_path / "enc.safetensors")
    else:
        bad = rewrite(encoder, tmp_path / "enc.safetensors", tensors=_drop_a_block,
                      metadata=lambda m: {k: v for k, v in m.items() if k != WEIGHTS_DIGEST_KEY})
    out = tmp_path / "run"
    code = main(["finetune", "--pretrained", str(bad), "--sigma", "0.25", "--epochs", "1", "--batch-size", "256",
                 "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "enc.safetensors" in err, err
    assert not out.exists()


@pytest.mark.parametrize("command", [["train", "--epochs", "1"], ["pretrain", "--steps", "1"],
                                     ["train-denoiser", "--epochs", "1"]], ids=lambda c: c[0])
def test_an_output_folder_that_cannot_be_made_is_refused_before_any_work(command, tmp_path, capsys, monkeypatch):
    (tmp_path / "afile").write_text("x")
    for first_step in [step for _, step in RUNS.values()]:  # no training step may run
        monkeypatch.setattr(first_step, _fail)
    code = main([*command, "--out", str(tmp_path / "afile" / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "cannot create folder" in err and "afile" in err and ".tmp" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


# -- OS errors: say what failed, on which path ------------------------------------------------------

def test_a_write_that_fails_names_the_operation_and_the_final_path(tmp_path, monkeypatch):
    target = tmp_path / "c.json"

    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a full disk does: no file name

    monkeypatch.setattr(Path, "write_text", no_space)
    with pytest.raises(UserError, match=rf"cannot write {target}: No space left on device") as info:
        write_json_atomic(target, {"a": 1})
    assert isinstance(info.value, OSError)  # callers that only warn on an unwritable file still catch it
    assert list(tmp_path.iterdir()) == []


def test_a_temporary_file_name_never_reaches_the_user(tmp_path, monkeypatch):
    import tempfile

    def denied(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), f"{dir}/.c.json.abc123.tmp")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(UserError, match=rf"cannot write {tmp_path / 'c.json'}: Permission denied") as info:
        write_json_atomic(tmp_path / "c.json", {"a": 1})
    assert ".tmp" not in str(info.value)


def test_a_checkpoint_that_cannot_be_written_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    model, cfg = tiny_model()
    with pytest.raises(UserError, match=r"cannot create folder .*afile") as info:
        save_checkpoint(tmp_path / "afile" / "m.safetensors", model, {"model": cfg})
    assert ".tmp" not in str(info.value)


def test_the_cli_names_the_failure_of_an_os_error_without_a_file_name(monkeypatch, capsys):
    import argparse

    import rrcm.cli

    def no_space(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    class Parser:
        def parse_args(self, argv):
            return argparse.Namespace(command="report", run=no_space)

    monkeypatch.setattr(rrcm.cli, "build_parser", Parser)
    code = main(["report", "x.tsv"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("rrcm: error: "), err
    assert "no file name" not in err and "No space left on device" in err, err


def test_a_folder_given_as_a_checkpoint_is_named_a_folder(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    with pytest.raises(UserError, match=r"checkpoint .*run is a folder; give the \.safetensors file in it"):
        read_checkpoint_config(tmp_path / "run")
    code = main(["certify", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "log.tsv")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "is a folder" in err and "not found" not in err, err


def test_the_cli_names_the_reason_and_path_of_a_read_error_without_suggesting_a_write(monkeypatch, capsys):
    import argparse

    import rrcm.cli

    def unreadable(args):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/data/train/cat/1.png")

    class Parser:
        def parse_args(self, argv):
            return argparse.Namespace(command="report", run=unreadable)

    monkeypatch.setattr(rrcm.cli, "build_parser", Parser)
    code = main(["report", "x.tsv"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "rrcm: error: Permission denied: /data/train/cat/1.png; check its permissions", err
