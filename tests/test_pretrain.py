"""rRCM pre-training and fine-tuning end to end at a tiny size: resume, learning, certification."""

import csv
import json

import pytest
import torch

from rrcm import diffusion
from rrcm.checkpoint import load_checkpoint, load_state, read_checkpoint_config
from rrcm.cli import main
from rrcm.errors import UserError
from rrcm.train.config import TrainConfig
from rrcm.train.classifier import train_classifier
from rrcm.train.pretrain import STATE_FILE, PretrainConfig, pretrain

SMALL = {"width": 32, "depth": 2, "heads": 2, "patch_size": 4}


def small_pretrain(**overrides):
    values = dict(data="digits", arch_options=dict(SMALL), steps=6, batch_size=32, lr=1e-3, warmup_steps=2,
                  projector_hidden=64, projector_dim=32, crop_scale_min=0.3, blur=False, checkpoint_every=2,
                  log_every=1, device="cpu")
    values.update(overrides)
    return PretrainConfig(**values)


def rows(path):
    with open(path) as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def test_pretraining_resumes_on_the_same_curve(tmp_path):
    cfg = small_pretrain()
    straight = pretrain(cfg, tmp_path / "a", progress=False)
    assert pretrain(cfg, tmp_path / "b", progress=False, stop_after_step=3).name == STATE_FILE
    state = load_state(tmp_path / "b" / STATE_FILE)
    assert state["step"] == 3 and {"model", "optimizer", "metrics"} <= state.keys()
    assert any(k.startswith("target.") for k in state["model"])  # the EMA target travels with the model
    resumed = pretrain(cfg, tmp_path / "b", progress=False)
    a, b = load_checkpoint_weights(straight), load_checkpoint_weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert rows(tmp_path / "a" / "metrics.csv") == rows(tmp_path / "b" / "metrics.csv")
    config = read_checkpoint_config(straight)
    assert config["kind"] == "rrcm_encoder" and config["grid"]["sigma_max"] == 80.0
    # the curriculum reached the final grid and the projector is not in the encoder checkpoint
    assert int(rows(tmp_path / "a" / "metrics.csv")[-1]["num_points"]) == 81
    assert all(k.startswith("encoder.") for k in a)


def load_checkpoint_weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_tiny_preset_learns(tmp_path):
    # pre-training loss falls; fine-tuning from it classifies noisy digits far above chance (10%)
    cfg = small_pretrain(steps=40, batch_size=128, lr=2e-3, warmup_steps=4, log_every=10, checkpoint_every=40)
    encoder = pretrain(cfg, tmp_path / "pre", progress=False)
    losses = [float(r["loss"]) for r in rows(tmp_path / "pre" / "metrics.csv")]
    assert losses[-1] < losses[0]
    finetune = TrainConfig(data="digits", arch="rrcm_vit", method="consistency", sigma=0.25, epochs=8,
                           batch_size=64, optimizer="adamw", lr=2e-3, weight_decay=0.05, layer_decay=0.8, lbd=1.0,
                           pretrained=str(encoder), device="cpu")
    checkpoint = train_classifier(finetune, tmp_path / "ft", progress=False)
    model, config = load_checkpoint(checkpoint)
    from rrcm.data import load_dataset

    test = load_dataset("digits", "test")
    x, y = test.batch(range(len(test)))
    torch.manual_seed(0)
    with torch.no_grad():
        accuracy = (model(x + 0.25 * torch.randn_like(x)).argmax(1) == y).float().mean().item()
    assert accuracy > 0.4
    # the encoder was really loaded: the fine-tuned checkpoint records it and the conditioning
    assert config["pretrained"]["path"] == str(encoder)
    expected = diffusion.conditioning_sigma(0.25)
    assert config["conditioning"] == expected
    assert config["model"]["condition_sigma"] == expected["sigma_condition"]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("rrcm")
    encoder = pretrain(small_pretrain(steps=2), out / "pre", progress=False)
    cfg = TrainConfig(data="digits", arch="rrcm_vit", method="consistency", sigma=0.5, epochs=1, batch_size=128,
                      optimizer="adamw", lr=1e-3, layer_decay=0.8, pretrained=str(encoder), device="cpu")
    return encoder, train_classifier(cfg, out / "ft", progress=False)


def test_finetuned_checkpoint_certifies_with_nothing_else(finetuned, tmp_path, capsys):
    _, checkpoint = finetuned
    log = tmp_path / "log.tsv"
    assert main(["certify", "--checkpoint", str(checkpoint), "--precision", "fp32", "--n0", "10", "--n", "100",
                 "--skip", "100",
                 "--out", str(log), "--quiet"]) == 0
    settings = json.loads((tmp_path / "log.tsv.json").read_text())["settings"]
    assert settings["sigma"] == 0.5 and len(log.read_text().splitlines()) == 1 + 5
    # the log holds what Smooth certifies with the checkpoint's own model: the conditioning travels with it
    from rrcm.certlog import read_log
    from rrcm.checkpoint import load_checkpoint
    from rrcm.data import load_dataset
    from rrcm.smoothing import Smooth

    model, config = load_checkpoint(checkpoint)
    assert config["model"]["condition_sigma"] == config["conditioning"]["sigma_condition"]
    smoothed = Smooth(model, 10, 0.5, seed=0)
    data = load_dataset("digits", "test")
    rows = read_log(log)
    for k, i in enumerate(rows.idx):
        cert = smoothed.certify_with_details(data[int(i)][0], 10, 100, 0.001, 1000, idx=int(i))
        assert (int(rows.predict[k]), int(rows.extras["nA"][k])) == (cert.prediction, cert.count_selected)
    # the recorded conditioning is really used: told another noise level, the model gives other logits
    x = torch.stack([data[i][0] for i in range(4)])
    with torch.no_grad():
        logits = model(x)
        model.condition_sigma = 2 * model.condition_sigma
        assert not torch.allclose(model(x), logits)


def test_certify_refuses_an_encoder(finetuned, tmp_path, capsys):
    encoder, _ = finetuned
    assert main(["certify", "--checkpoint", str(encoder), "--out", str(tmp_path / "l")]) == 2
    assert "pre-trained rRCM encoder, not a classifier" in capsys.readouterr().err


def test_layer_decay_scales_learning_rates(finetuned):
    from rrcm.train.engine import layer_id, parameter_groups

    _, checkpoint = finetuned
    model, config = load_checkpoint(checkpoint)
    depth = config["model"]["depth"]
    assert layer_id("encoder.cls_token", depth) == 0 and layer_id("encoder.blocks.1.attn.qkv.weight", depth) == 2
    assert layer_id("head.weight", depth) == depth + 1
    groups = parameter_groups(model, TrainConfig().weight_decay, layer_decay=0.5, depth=depth)
    scales = {g["lr_scale"] for g in groups}
    assert scales == {0.5 ** k for k in range(depth + 2)}


def test_freeze_head_ablation_keeps_the_head(tmp_path, finetuned):
    encoder, _ = finetuned
    cfg = TrainConfig(data="digits", arch="rrcm_vit", method="consistency", sigma=0.5, epochs=1, batch_size=128,
                      optimizer="adamw", lr=1e-3, pretrained=str(encoder), freeze_head=True, device="cpu", seed=3)
    trained, _ = load_checkpoint(train_classifier(cfg, tmp_path / "frozen", progress=False))
    from rrcm.models import build_model

    torch.manual_seed(0)
    # the head equals a fresh model's head built with the same seed the loop uses
    from rrcm.smoothing.noise import derive_seed

    torch.manual_seed(derive_seed(3, 0))
    fresh = build_model(read_checkpoint_config(tmp_path / "frozen" / "model.safetensors")["model"])
    assert torch.equal(trained.head.weight, fresh.head.weight)


@pytest.mark.parametrize("change,message", [
    (dict(ema_schedule="cosine"), "unknown EMA schedule"),
    (dict(batch_size=0), "batch-size must be at least 1"),
    (dict(trajectory_weight=0.0, instance_weight=0.0), "not both zero"),
    (dict(crop_scale_min=0.0), "crop-scale-min"),
])
def test_bad_pretraining_options(change, message, tmp_path):
    with pytest.raises(UserError, match=message):
        pretrain(small_pretrain(**change), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_pretrain_and_finetune_dry_runs(capsys, tmp_path):
    assert main(["pretrain", "--out", str(tmp_path / "p"), "--arch-option", "size=digits", "--arch-option",
                 "depth=5", "--ema-schedule", "sigmoid", "--dry-run"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["model"]["width"] == 48 and resolved["model"]["depth"] == 5
    assert resolved["pretrain"]["ema_schedule"] == "sigmoid" and resolved["pretrain"]["temperature"] == 0.2
    assert main(["finetune", "--out", str(tmp_path / "f"), "--sigma", "0.5", "--dry-run"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["train"]["optimizer"] == "adamw" and resolved["train"]["method"] == "consistency"
    assert resolved["conditioning"]["sigma_condition"] == diffusion.conditioning_sigma(0.5)["sigma_condition"]
    assert not (tmp_path / "p").exists() and not (tmp_path / "f").exists()


def test_resumed_pretraining_reproduces_every_file(tmp_path):
    # Checkpoints every 3 steps, a metrics row every 2: the interruptions fall inside a logging window, whose
    # running sums must travel in the training state for the resumed row to equal the uninterrupted one.
    cfg = small_pretrain(steps=7, batch_size=16, checkpoint_every=3, log_every=2)
    pretrain(cfg, tmp_path / "a", progress=False)
    assert pretrain(cfg, tmp_path / "b", progress=False, stop_after_step=3).name == STATE_FILE
    assert pretrain(cfg, tmp_path / "b", progress=False, stop_after_step=5).name == STATE_FILE
    pretrain(cfg, tmp_path / "b", progress=False)
    a, b = tmp_path / "a", tmp_path / "b"
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir()) == ["config.json", "encoder.safetensors", "metrics.csv"]
    assert (a / "config.json").read_bytes() == (b / "config.json").read_bytes()
    assert (a / "encoder.safetensors").read_bytes() == (b / "encoder.safetensors").read_bytes()
    with open(a / "metrics.csv") as f:
        straight = list(csv.DictReader(f))
    with open(b / "metrics.csv") as f:
        resumed = list(csv.DictReader(f))
    assert [r["step"] for r in straight] == ["2", "4", "6", "7"]
    # `seconds` is wall-clock time spent in the window; every other column is reproduced to the byte
    assert all(float(r["seconds"]) >= 0 for r in straight + resumed)
    assert rows(a / "metrics.csv") == rows(b / "metrics.csv")
    text = [(p / "metrics.csv").read_text().splitlines() for p in (a, b)]
    assert [line.rsplit(",", 1)[0] for line in text[0]] == [line.rsplit(",", 1)[0] for line in text[1]]
