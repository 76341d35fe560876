"""The command line: every user mistake is one line, exit status 2, no traceback, no output file."""

import json
import subprocess
import sys

import pytest
import torch

from rrcm.checkpoint import read_checkpoint_config, save_checkpoint
from rrcm.cli import main
from rrcm.models import build_model
from tests.helpers.cli import assert_one_line_error, run_cli
from tests.test_data_safety import no_decoding  # noqa: F401  (fixture: any image decode fails the test)


@pytest.fixture(scope="module")
def nan_checkpoint(tiny_checkpoint, tmp_path_factory):
    config = read_checkpoint_config(tiny_checkpoint)
    model = build_model(config["model"])
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    path = tmp_path_factory.mktemp("nan") / "model.safetensors"
    save_checkpoint(path, model, config)
    return path


CERTIFY_CASES = [
    (["--sigma", "0"], r"sigma must be a positive"),
    (["--sigma", "-0.25"], r"sigma must be a positive"),
    (["--alpha", "1.5"], r"alpha must be in \(0, 1\)"),
    (["--alpha", "0"], r"alpha must be in \(0, 1\)"),
    (["--n0", "500", "--n", "100"], r"n0 \(500\) is larger than n \(100\)"),
    (["--n0", "5", "--n", "8"], r"n = 8 can never certify at alpha = 0.001.*n >= 10"),
    (["--data", "imagenet"], r"unknown data ?set|imagenet"),
    (["--data", "mnist"], r"root|folder"),
    (["--split", "validation"], r"split"),
    (["--batch-size", "0"], r"batch size must be at least 1"),
    (["--precision", "fp8"], r"precision"),
    (["--bogus-flag"], r"unrecognized arguments: --bogus-flag"),
]


@pytest.mark.parametrize("extra,pattern", CERTIFY_CASES)
def test_certify_bad_input(extra, pattern, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "log.tsv"
    code, _, err = run_cli(["certify", "--checkpoint", tiny_checkpoint, "--n", "200", "--n0", "10",
                            "--out", out, "--quiet", *extra], capsys)
    assert_one_line_error(code, err, pattern)
    assert list(tmp_path.iterdir()) == []


def test_certify_missing_and_corrupt_checkpoint(tmp_path, capsys):
    code, _, err = run_cli(["certify", "--checkpoint", tmp_path / "nope.safetensors", "--out", tmp_path / "l"], capsys)
    assert_one_line_error(code, err, "checkpoint not found")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    code, _, err = run_cli(["certify", "--checkpoint", bad, "--out", tmp_path / "l"], capsys)
    assert_one_line_error(code, err, "corrupt, truncated")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]


def test_certify_checkpoint_data_mismatch(tiny_checkpoint, shared_dir, tmp_path, capsys):
    code, _, err = run_cli(["certify", "--checkpoint", tiny_checkpoint, "--data", "mnist", "--data-root",
                            shared_dir / "data" / "mnist", "--out", tmp_path / "l", "--n", "100"], capsys)
    assert_one_line_error(code, err, r"expects 8 image size but the data set has 28")
    assert list(tmp_path.iterdir()) == []


def test_certify_nan_model(nan_checkpoint, tmp_path, capsys):
    code, _, err = run_cli(["certify", "--checkpoint", nan_checkpoint, "--out", tmp_path / "l", "--n", "100",
                            "--n0", "10", "--quiet"], capsys)
    assert_one_line_error(code, err, "NaN")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra,examples", [([], 500), (["--skip", "10"], 50), (["--max-index", "10"], 10),
                                            (["--skip", "3", "--max-index", "10"], 4)])
def test_certify_dry_run_counts_what_the_run_will_certify_and_writes_nothing(extra, examples, tiny_checkpoint,
                                                                               tmp_path, capsys):
    code, out, _ = run_cli(["certify", "--checkpoint", tiny_checkpoint, "--out", tmp_path / "l", *extra,
                            "--dry-run"], capsys)
    assert code == 0
    resolved = json.loads(out)
    assert resolved["settings"]["sigma"] == 0.5 and resolved["examples"] == examples
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra,pattern", [
    (["--method", "mixup"], "unknown method"),
    (["--sigma", "0"], "sigma must be a positive"),
    (["--arch", "resnet9000"], "resnet9000"),
    (["--preset", "no-such-preset"], "unknown preset"),
    (["--epochs", "ten"], "invalid int value"),
    (["--data", "mnist", "--data-root", "/nonexistent/folder"], "/nonexistent/folder"),
])
def test_train_bad_input(extra, pattern, tmp_path, capsys):
    code, _, err = run_cli(["train", "--out", tmp_path / "run", "--quiet", *extra], capsys)
    assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "run").exists()


def test_train_dry_run_prints_the_resolved_config(tmp_path, capsys):
    code, out, _ = run_cli(["train", "--out", tmp_path / "run", "--arch", "vit", "--arch-option", "depth=2",
                            "--method", "consistency", "--dry-run"], capsys)
    assert code == 0
    resolved = json.loads(out)
    assert resolved["model"]["depth"] == 2 and resolved["model"]["image_size"] == 8
    assert resolved["train"]["method"] == "consistency" and resolved["data"]["num_classes"] == 10
    assert not (tmp_path / "run").exists()


def test_report_bad_logs(tmp_path, capsys):
    code, _, err = run_cli(["report", tmp_path / "missing.tsv"], capsys)
    assert_one_line_error(code, err, "missing.tsv")
    bad = tmp_path / "bad.tsv"
    bad.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\tx\t0.5\t1\t0:00:01\n")
    code, _, err = run_cli(["report", bad], capsys)
    assert_one_line_error(code, err, r"bad.tsv:2: column .predict.")
    good = tmp_path / "good.tsv"
    good.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t0:00:01\n")
    code, _, err = run_cli(["report", good, "--radii", "a,b"], capsys)
    assert_one_line_error(code, err, r"--radii must be comma-separated numbers, got 'a,b'")


def test_report_on_published_logs(shared_dir, tmp_path, capsys):
    logs = sorted((shared_dir / "oracle" / "certify-logs" / "mnist" / "cohen").glob("noise_*"))
    plot = tmp_path / "plot.png"
    code, out, _ = run_cli(["report", *logs, "--format", "json", "--plot", plot], capsys)
    assert code == 0
    table = json.loads(out[: out.rindex("}") + 1])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {row["label"]: row for row in table["rows"]}
    for log in logs:
        # certified accuracy at radius r, from the raw file: correct and radius >= r, over all rows
        lines = [line.split("\t") for line in log.read_text().splitlines()[1:]]
        row = rows[f"cohen/{log.name}"]
        assert row["n_examples"] == len(lines)
        for radius, accuracy in row["certified_accuracy"].items():
            expected = sum(int(f[4]) == 1 and float(f[3]) >= float(radius) for f in lines) / len(lines)
            assert accuracy == pytest.approx(expected, abs=1e-12), (log.name, radius)


def test_report_envelope_groups_and_every(shared_dir, tmp_path, capsys):
    # the published Gaussian MNIST logs on every 20th test image, as a study certified with --skip 20 has them
    cohen = sorted((shared_dir / "oracle" / "certify-logs" / "mnist" / "cohen").glob("noise_*"))
    code, out, _ = run_cli(["report", "--every", "20", "--radii", "0,1", "--format", "json", "--no-envelope",
                            f"Gaussian={','.join(map(str, cohen))}", cohen[1]], capsys)
    assert code == 0
    rows = json.loads(out)["rows"]
    assert [row["label"] for row in rows] == [f"cohen/{cohen[1].name}", "Gaussian"]
    assert rows[0]["n_examples"] == rows[1]["n_examples"] == 500 and rows[0]["sigma"] == 0.5
    assert rows[1]["certified_accuracy"]["0.0"] == max(
        json.loads(run_cli(["report", "--every", "20", "--radii", "0", "--format", "json", log], capsys)[1])
        ["rows"][0]["certified_accuracy"]["0.0"] for log in cohen)
    code, _, err = run_cli(["report", "--every", "0", cohen[0]], capsys)
    assert_one_line_error(code, err, "--every")


def test_console_script_exit_code_and_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "rrcm", "certify", "--checkpoint", str(tmp_path / "x"),
                             "--out", str(tmp_path / "log")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("rrcm: error: checkpoint not found")
    assert "Traceback" not in result.stderr


def test_every_command_has_help(capsys):
    for command in ("demo", "train", "certify", "report"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: rrcm " + command in capsys.readouterr().out


DRY_RUNS = [
    ["train", "--preset", "cifar10-resnet110", "--sigma", "0.25", "--data-root", "{cifar_jpeg}", "--out", "{out}"],
    ["pretrain", "--preset", "cifar10-b-pretrain", "--data-root", "{cifar_jpeg}", "--out", "{out}"],
    ["finetune", "--preset", "cifar10-b-finetune", "--sigma", "0.25", "--data-root", "{cifar_jpeg}", "--out", "{out}"],
    ["train-denoiser", "--data", "cifar10", "--data-root", "{cifar_jpeg}", "--out", "{out}"],
    ["train", "--data", "mnist", "--data-root", "{mnist}", "--out", "{out}"],
]


@pytest.mark.parametrize("argv", DRY_RUNS, ids=[" ".join(a[:3]) for a in DRY_RUNS])
def test_dry_runs_of_paper_presets_decode_no_image(argv, shared_dir, tmp_path, monkeypatch, capsys, no_decoding):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = shared_dir / "data"
    fill = {"cifar_jpeg": data / "cifar10-jpeg", "mnist": data / "mnist",
            "out": tmp_path / "run"}
    code, out, err = run_cli([a.format(**fill) for a in argv] + ["--dry-run"], capsys)
    assert code == 0, err
    resolved = json.loads(out)
    assert resolved["data"]["name"] in ("cifar10", "mnist")
    assert not (tmp_path / "run").exists()


def test_certify_dry_run_on_real_data_decodes_no_image_and_counts(shared_dir, tmp_path, capsys, no_decoding):
    from rrcm.checkpoint import read_checkpoint_config

    # a CIFAR-10 classifier that was never trained: the dry run needs its config only
    from rrcm.models import model_config

    arch = model_config("cifar_resnet20", num_classes=10, in_channels=3, image_size=32,
                        mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    config = {"kind": "classifier", "sigma": 0.25, "data": {"name": "cifar10"}, "model": arch}
    checkpoint = tmp_path / "c.safetensors"
    save_checkpoint(checkpoint, build_model(arch), config)
    code, out, err = run_cli(["certify", "--checkpoint", checkpoint, "--data-root", shared_dir / "data" / "cifar10-jpeg",
                              "--skip", "100", "--out", tmp_path / "log.tsv", "--dry-run"], capsys)
    assert code == 0, err
    assert json.loads(out)["examples"] == 100  # 10,000 test images, every 100th
    assert not (tmp_path / "log.tsv").exists()


def test_help_lists_what_the_registries_hold(capsys):
    from rrcm.data import DATASETS
    from rrcm.models import arch_names
    from rrcm.smoothing.procedures import SEQUENCES
    from rrcm.smoothing.runner import PROCEDURES
    from rrcm.train.objectives import METHODS

    def help_text(command):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        return " ".join(capsys.readouterr().out.split())

    for command in ("train", "finetune"):
        text = help_text(command)
        assert f"--arch ARCH model architecture: {', '.join(arch_names(composite=False))}" in text
        assert f"--method METHOD training objective: {', '.join(METHODS)}" in text
        assert f"--data DATA data set: {', '.join(DATASETS)}" in text
    text = help_text("certify")
    assert f"--procedure {{{','.join(PROCEDURES)}}}" in text and f"--sequence {{{','.join(SEQUENCES)}}}" in text


def test_the_distributed_context_leaves_the_group_together_or_at_once_on_an_error(monkeypatch):
    import rrcm.distributed as distributed_module

    calls = []
    monkeypatch.setattr(distributed_module, "shutdown", lambda ctx, failed=False: calls.append(failed))
    with distributed_module.distributed("cpu") as ctx:
        assert ctx.world_size == 1 and ctx.device == torch.device("cpu")
    assert calls == [False]
    with pytest.raises(KeyError, match="boom"):
        with distributed_module.distributed("cpu"):
            raise KeyError("boom")
    assert calls == [False, True]
    from rrcm.errors import UserError

    with pytest.raises(UserError, match="unknown device 'tpu'"):
        with distributed_module.distributed("tpu"):
            pass
    assert calls == [False, True]  # nothing was joined, so nothing is left


def test_the_malloc_re_exec_runs_the_command_once_with_the_tunables(monkeypatch):
    import rrcm.cli as cli

    execs = []
    monkeypatch.setattr(cli.os, "execve", lambda program, argv, env: execs.append((program, argv, env)))
    monkeypatch.setattr(cli.sys, "platform", "linux")
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("RRCM_NO_REEXEC", raising=False)
    monkeypatch.setenv("RRCM_TEST_KEPT", "kept")
    cli.reexec_with_malloc_tunables(["/bin/python", "-m", "rrcm", "certify"])
    [(program, argv, env)] = execs
    assert program == "/bin/python" and argv == ["/bin/python", "-m", "rrcm", "certify"]
    assert env["GLIBC_TUNABLES"] == cli.MALLOC_TUNABLES and env["RRCM_TEST_KEPT"] == "kept"
    for variable, value in (("GLIBC_TUNABLES", "glibc.malloc.check=0"), ("RRCM_NO_REEXEC", "1")):
        monkeypatch.setenv(variable, value)
        cli.reexec_with_malloc_tunables(["/bin/python"])
        monkeypatch.delenv(variable)
    assert len(execs) == 1

    def refuse(*args):
        raise PermissionError("no exec here")

    monkeypatch.setattr(cli.os, "execve", refuse)
    cli.reexec_with_malloc_tunables(["/bin/python"])  # runs on without the setting
