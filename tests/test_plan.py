"""rrcm.certify.plan_certification: the certify policy the CLI and the demo share."""

import json
import subprocess
import sys
import warnings

import pytest
import torch

from rrcm.certify import check_certifiable, plan_certification, smoothing_sigma
from rrcm.checkpoint import read_checkpoint_config, save_checkpoint
from rrcm.cli import main
from rrcm.distributed import DistContext
from rrcm.errors import UserError
from rrcm.models import build_model, model_config
from tests.test_runner import log_rows

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def rrcm_vit_checkpoint(tmp_path_factory):
    """An untrained digits-sized rRCM classifier fine-tuned (as it says) for σ = 0.25."""
    arch = model_config("rrcm_vit", num_classes=10, in_channels=1, image_size=8, mean=[0.5], std=[0.5],
                        size="digits")
    path = tmp_path_factory.mktemp("vit") / "model.safetensors"
    save_checkpoint(path, build_model(arch), {"kind": "classifier", "sigma": 0.25, "data": {"name": "digits"},
                                              "model": arch})
    return path


def test_the_plan_takes_sigma_and_data_from_the_checkpoint_and_counts_the_examples(tiny_checkpoint):
    plan = plan_certification(tiny_checkpoint, n0=10, n=100, skip=10, max_index=95, load=False)
    assert plan.settings.sigma == 0.5 and plan.dataset is None
    assert plan.data_source == {"name": "digits", "split": "test", "root": None}
    assert plan.indices == list(range(0, 95, 10)) and plan.num_examples == 500
    assert plan.describe("cpu")["examples"] == 10


def test_describe_is_what_the_dry_run_prints(tiny_checkpoint, tmp_path, capsys):
    argv = ["--sigma", "0.25", "--skip", "7", "--procedure", "sequential", "--radii", "0:1:0.5", "--precision", "auto"]
    assert main(["certify", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "l"), *argv,
                 "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    plan = plan_certification(str(tiny_checkpoint), sigma=0.25, skip=7, procedure="sequential", radii=(0.0, 0.5, 1.0),
                              precision="auto", load=False)
    assert json.loads(json.dumps(plan.describe("auto"))) == printed


def test_running_the_plan_writes_the_log_the_command_writes(tiny_checkpoint, tmp_path, capsys):
    options = dict(n0=10, n=100, skip=100, batch_size=50, seed=3, precision="fp32")
    log = plan_certification(str(tiny_checkpoint), **options).run(tmp_path / "api.tsv", ctx=CPU, progress=False)
    assert main(["certify", "--checkpoint", str(tiny_checkpoint), "--n0", "10", "--n", "100", "--skip", "100",
                 "--batch-size", "50", "--seed", "3", "--precision", "fp32", "--quiet",
                 "--out", str(tmp_path / "cli.tsv")]) == 0
    assert capsys.readouterr().out.strip() == f"log: {tmp_path / 'cli.tsv'}"
    assert log_rows(log) == log_rows(tmp_path / "cli.tsv") and len(log_rows(log)) == 1 + 5
    api, cli = (json.loads((tmp_path / f"{name}.tsv.json").read_text()) for name in ("api", "cli"))
    assert api["settings"] == cli["settings"] and api["data"] == cli["data"]


def test_a_plan_made_to_describe_does_not_run(tiny_checkpoint, tmp_path):
    plan = plan_certification(tiny_checkpoint, load=False)
    with pytest.raises(ValueError, match="load=False"):
        plan.run(tmp_path / "l.tsv", ctx=CPU)
    assert list(tmp_path.iterdir()) == []


def test_the_plan_refuses_what_is_not_a_classifier_and_data_that_does_not_fit(tiny_checkpoint, shared_dir):
    with pytest.raises(UserError, match="is a pre-trained rRCM encoder, not a classifier; fine-tune it first"):
        check_certifiable({"kind": "rrcm_encoder"}, "e.safetensors")
    with pytest.raises(UserError, match=r"is a denoiser, not a classifier; combine it with a classifier"):
        check_certifiable({"kind": "denoiser"}, "d.safetensors")
    check_certifiable({"kind": "classifier"}, "c.safetensors")
    with pytest.raises(UserError, match="expects 8 image size but the data set has 28"):
        plan_certification(tiny_checkpoint, data="mnist", data_root=shared_dir / "data" / "mnist", load=False)
    with pytest.raises(UserError, match="unknown precision 'fp8'; choose auto, fp32, bf16 or fp16"):
        plan_certification(tiny_checkpoint, precision="fp8", load=False)


def test_sigma_defaults_to_the_checkpoints_and_a_conditioned_model_warns_at_another():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert smoothing_sigma({"sigma": 0.25, "model": {"arch": "rrcm_vit"}}, None) == 0.25
        assert smoothing_sigma({"sigma": 0.25, "model": {"arch": "lenet5"}}, 1.0) == 1.0  # not conditioned
        assert smoothing_sigma({"sigma": None, "model": {"arch": "rrcm_vit"}}, 0.5) == 0.5  # nothing to compare
    with pytest.raises(UserError, match="the checkpoint records no σ; give --sigma"):
        smoothing_sigma({"model": {"arch": "lenet5"}}, None)
    with pytest.warns(UserWarning, match=r"^this model is conditioned on σ = 0.25 but certification uses σ = 0.5; "
                                         r"assemble a DDS model for σ = 0.5 for meaningful results$"):
        smoothing_sigma({"sigma": 0.25, "model": {"arch": "dds"}}, 0.5)


def test_the_command_prints_the_sigma_warning_on_one_line(rrcm_vit_checkpoint, tmp_path, cli_env):
    assert read_checkpoint_config(rrcm_vit_checkpoint)["model"]["arch"] == "rrcm_vit"
    result = subprocess.run([sys.executable, "-m", "rrcm", "certify", "--checkpoint", str(rrcm_vit_checkpoint),
                             "--sigma", "0.5", "--out", str(tmp_path / "l.tsv"), "--dry-run"],
                            capture_output=True, text=True, env=cli_env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["rrcm: warning: this model is conditioned on σ = 0.25 but certification "
                                          "uses σ = 0.5; fine-tune a model for σ = 0.5 for meaningful results"]
    assert json.loads(result.stdout)["settings"]["sigma"] == 0.5


def test_an_unknown_procedure_names_the_registered_ones():
    from rrcm.smoothing.runner import PROCEDURES, CertifySettings

    assert PROCEDURES == ("cohen", "sequential")
    with pytest.raises(UserError) as error:
        CertifySettings(sigma=0.5, procedure="fast").certification_procedure()
    assert str(error.value) == "unknown certification procedure 'fast'; choose cohen or sequential"
