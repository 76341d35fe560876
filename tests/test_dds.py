"""Diffusion denoised smoothing: timestep choice, exact noise, checkpoint assembly, certification, denoiser training."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from torch import nn

from rrcm.baselines.dds import DDSClassifier, dds_timestep, ddim_timesteps
from rrcm.baselines.denoiser import (SCHEDULER_DEFAULTS, DenoiserConfig, alphas_cumprod, load_denoiser,
                                     train_denoiser)
from rrcm.checkpoint import load_checkpoint, read_checkpoint_config, save_checkpoint
from rrcm.cli import main
from rrcm.models import ARCHS, build_model, model_config
from tests.helpers.cli import assert_one_line_error, run_cli

SIGMAS = (0.12, 0.25, 0.5, 1.0)
# smallest t with √((1−ᾱ_t)/ᾱ_t) ≥ 2σ for DDPM's linear schedule (1e-4 … 0.02, 1000 steps)
EXPECTED_T = {0.12: 70, 0.25: 145, 0.5: 259, 1.0: 396}


def linear_alphas_cumprod(steps=1000, start=1e-4, end=0.02) -> list[float]:
    """ᾱ_t by hand: betas = linspace(start, end, steps), cumulative product of 1 − β."""
    out, prod = [], 1.0
    for i in range(steps):
        prod *= 1.0 - (start + (end - start) * i / (steps - 1))
        out.append(prod)
    return out


def level(alphas, t) -> float:
    return math.sqrt((1.0 - alphas[t]) / alphas[t])


# -- timestep choice -------------------------------------------------------------------------------

@pytest.mark.parametrize("sigma", SIGMAS)
def test_timestep_is_the_smallest_with_at_least_the_real_noise(sigma):
    alphas = linear_alphas_cumprod()
    t, effective = dds_timestep(sigma, alphas)
    assert t == EXPECTED_T[sigma]
    assert level(alphas, t) >= 2 * sigma > level(alphas, t - 1)
    assert effective == pytest.approx(level(alphas, t) / 2, rel=1e-12)
    assert sigma <= effective < 1.01 * sigma  # the rounding-up mismatch is tiny at 1000 steps
    # the library's own table (what the trained denoisers use) gives the same choice
    library = alphas_cumprod(SCHEDULER_DEFAULTS)
    assert torch.allclose(library, torch.tensor(alphas, dtype=torch.float64), rtol=1e-12, atol=0)
    assert dds_timestep(sigma, library)[0] == t


def test_timestep_rejects_impossible_sigmas():
    alphas = linear_alphas_cumprod()
    largest = level(alphas, 999) / 2  # ≈ 78.7 on [0, 1] pixels
    assert dds_timestep(largest, alphas)[0] == 999
    with pytest.raises(ValueError, match="too large"):
        dds_timestep(largest * 1.01, alphas)
    for bad in (0.0, -0.25, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            dds_timestep(bad, alphas)
    assert ddim_timesteps(145, 1) == [145] and ddim_timesteps(145, 2) == [145, 73]
    with pytest.raises(ValueError):
        ddim_timesteps(3, 4)


# -- the forward pass adds no noise ----------------------------------------------------------------

class SpyDenoiser(nn.Module):
    """Records what it is given and predicts ε̂ = 0 (so x̂0 = x_t / √ᾱ_t)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x_t, timesteps):
        self.calls.append((x_t.clone(), timesteps.clone()))
        return torch.zeros_like(x_t)


class SpyClassifier(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.num_classes = num_classes
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.clone())
        return torch.zeros(x.shape[0], self.num_classes)


def test_the_unet_sees_exactly_the_certifiers_noise():
    alphas = linear_alphas_cumprod()
    sigma = 0.25
    t, _ = dds_timestep(sigma, alphas)
    denoiser, classifier = SpyDenoiser(), SpyClassifier()
    model = DDSClassifier(denoiser, classifier, alphas, t, sigma)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 8, 8, generator=generator)
    delta = sigma * torch.randn(x.shape, generator=generator)  # what the certifier adds
    rng_before = torch.get_rng_state()
    first = model(x + delta)
    second = model(x + delta)
    assert torch.equal(torch.get_rng_state(), rng_before)  # no random numbers drawn
    assert torch.equal(first, second)
    x_t, timesteps = denoiser.calls[0]
    expected = math.sqrt(alphas[t]) * (2 * (x + delta) - 1)
    assert torch.allclose(x_t, expected, atol=1e-6, rtol=0)  # √ᾱ_t·(2(x+δ) − 1): no extra noise
    assert timesteps.dtype == torch.long and timesteps.tolist() == [t] * 5
    # ε̂ = 0: the classifier gets the noisy input itself, clipped to [0, 1]
    assert torch.allclose(classifier.inputs[0], (x + delta).clamp(0, 1), atol=1e-6, rtol=0)


def test_multi_step_ddim_is_deterministic_and_follows_the_update():
    alphas = linear_alphas_cumprod()
    t, _ = dds_timestep(0.25, alphas)
    denoiser, classifier = SpyDenoiser(), SpyClassifier()
    model = DDSClassifier(denoiser, classifier, alphas, t, 0.25, steps=2)
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.3
    model(x)
    (first, t0), (second, t1) = denoiser.calls
    assert t0.tolist() == [t] * 3 and t1.tolist() == [ddim_timesteps(t, 2)[1]] * 3
    x0 = (2 * x - 1).clamp(-1, 1)  # ε̂ = 0 → x̂0 = z, clamped
    assert torch.allclose(second, math.sqrt(alphas[t1[0]]) * x0, atol=1e-6, rtol=0)
    assert torch.allclose(classifier.inputs[0], (x0 + 1) / 2, atol=1e-6, rtol=0)



def test_registry_builds_dds_from_nested_configs():
    from rrcm.baselines.denoiser import denoiser_model_config
    from rrcm.models import COMPOSITE_ARCHS

    assert "dds" in COMPOSITE_ARCHS and "dds" not in ARCHS  # built from nested configs, not trained
    common = dict(num_classes=10, in_channels=1, image_size=8, mean=[0.3], std=[0.4])
    denoiser = denoiser_model_config(1, 8, block_out_channels=[16, 32])
    classifier = model_config("lenet5", **common)
    cfg = model_config("dds", **common, denoiser=denoiser, classifier=classifier, sigma=0.5)
    assert (cfg["timestep"], cfg["steps"]) == (EXPECTED_T[0.5], 1)  # the rule fills in t
    assert model_config(**json.loads(json.dumps(cfg))) == cfg
    model = build_model(cfg)
    assert isinstance(model, DDSClassifier) and model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="'classifier'"):
        model_config("dds", **common, denoiser=denoiser, sigma=0.5)
    with pytest.raises(ValueError, match="image_size"):
        model_config("dds", **common, denoiser=denoiser, sigma=0.5,
                     classifier=model_config("lenet5", **{**common, "image_size": 28}))
    with pytest.raises(ValueError, match="cannot itself be a 'dds'"):
        model_config("dds", **common, denoiser=denoiser, classifier=cfg, sigma=0.5)
    with pytest.raises(ValueError, match="'steps'"):
        model_config("dds", **common, denoiser=denoiser, classifier=classifier, sigma=0.5, timestep=3, steps=4)
    with pytest.raises(ValueError, match="too large"):
        model_config("dds", **common, denoiser=denoiser, classifier=classifier, sigma=100.0)

# -- trained pieces: denoiser, clean classifier, assembled checkpoint -------------------------------

def tiny_denoiser_config(**overrides) -> DenoiserConfig:
    # the "small" UNet at half width (~0.17M parameters): seconds per epoch on digits
    values = dict(data="digits", epochs=2, batch_size=128, lr=3e-3, warmup_steps=5, device="cpu",
                  arch_options={"block_out_channels": [16, 32], "norm_num_groups": 8})
    values.update(overrides)
    return DenoiserConfig(**values)


@pytest.fixture(scope="module")
def denoiser_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("denoiser")
    return train_denoiser(tiny_denoiser_config(), out, progress=False)


@pytest.fixture(scope="module")
def clean_classifier(tmp_path_factory):
    """A LeNet-5 trained on clean digits (no smoothing noise), as DDS uses."""
    from rrcm.train.config import TrainConfig
    from rrcm.train.classifier import train_classifier

    out = tmp_path_factory.mktemp("clean")
    cfg = TrainConfig(data="digits", arch="lenet5", method="clean", epochs=3, batch_size=64, lr=0.05, device="cpu")
    return train_classifier(cfg, out, progress=False)


@pytest.fixture(scope="module")
def dds_checkpoint(denoiser_run, clean_classifier, tmp_path_factory):
    out = tmp_path_factory.mktemp("dds") / "model.safetensors"
    code = main(["dds", "assemble", "--denoiser", str(denoiser_run), "--classifier", str(clean_classifier),
                 "--sigma", "0.25", "--out", str(out)])
    assert code == 0
    return out


def test_assembled_checkpoint_round_trips(dds_checkpoint, denoiser_run, clean_classifier):
    config = read_checkpoint_config(dds_checkpoint)
    assert (config["kind"], config["method"], config["sigma"]) == ("classifier", "dds", 0.25)
    model_cfg = config["model"]
    assert model_cfg["arch"] == "dds" and "dds" not in ARCHS
    assert model_cfg["timestep"] == config["dds"]["timestep"] == EXPECTED_T[0.25]
    assert config["dds"]["effective_sigma"] >= 0.25
    assert config["dds"]["denoiser"]["sha256"] and config["dds"]["classifier"]["sha256"]
    assert model_config(**json.loads(json.dumps(model_cfg))) == model_cfg  # complete and stable
    assert json.loads((dds_checkpoint.parent / "model.safetensors.json").read_text()) == config

    built = build_model(model_cfg)
    assert isinstance(built, DDSClassifier)
    keys = list(built.state_dict())
    assert all(k.startswith(("denoiser.", "classifier.")) for k in keys)
    assert any(k.startswith("denoiser.") for k in keys) and any(k.startswith("classifier.") for k in keys)

    loaded, _ = load_checkpoint(dds_checkpoint)
    unet, _ = load_denoiser(denoiser_run)
    classifier, _ = load_checkpoint(clean_classifier)
    by_hand = DDSClassifier(unet, classifier, alphas_cumprod(SCHEDULER_DEFAULTS), EXPECTED_T[0.25], 0.25).eval()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    x = x + 0.25 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        rng_before = torch.get_rng_state()
        out = loaded(x)
        assert torch.equal(out, loaded(x))  # deterministic with the real UNet too
        assert torch.equal(torch.get_rng_state(), rng_before)
        assert torch.allclose(out, by_hand(x), atol=1e-5, rtol=0)
    assert out.shape == (6, 10)


def test_a_dds_checkpoint_loads_in_a_fresh_process_through_the_registry(dds_checkpoint):
    # nothing imports rrcm.baselines first: the registry finds "dds" (rrcm.ARCH_MODULES) on its own
    import subprocess
    import sys

    script = ("import sys; from rrcm.checkpoint import load_checkpoint; "
              "model, config = load_checkpoint(sys.argv[1]); "
              "print(type(model).__module__, type(model).__name__, config['model']['arch'])")
    done = subprocess.run([sys.executable, "-c", script, str(dds_checkpoint)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["rrcm.baselines.dds", "DDSClassifier", "dds"]


def test_dds_checkpoint_certifies_with_the_standard_runner(dds_checkpoint, tmp_path, capsys):
    from rrcm.certlog import read_log

    log = tmp_path / "log.tsv"
    code, out, err = run_cli(["certify", "--checkpoint", dds_checkpoint, "--precision", "fp32", "--n0", 10, "--n", 50,
                              "--max-index", 4,
                              "--batch-size", 60, "--quiet", "--out", log], capsys)
    assert code == 0, err
    rows = read_log(log)
    assert list(rows.idx) == [0, 1, 2, 3]
    assert rows.sigma == 0.25  # σ came from the checkpoint
    # the same certificates as Smooth gives the assembled model directly, example by example
    from rrcm.checkpoint import load_checkpoint
    from rrcm.data import load_dataset
    from rrcm.smoothing import Smooth

    model, config = load_checkpoint(dds_checkpoint)
    smoothed = Smooth(model, 10, config["sigma"], seed=0)
    data = load_dataset("digits", "test")
    for k, i in enumerate(rows.idx):
        cert = smoothed.certify_with_details(data[int(i)][0], 10, 50, 0.001, 60, idx=int(i))
        assert (int(rows.predict[k]), int(rows.extras["cA"][k]), int(rows.extras["nA"][k])) == \
            (cert.prediction, cert.selected, cert.count_selected)
        assert float(rows.radius[k]) == cert.radius


def test_train_denoiser_resumes_exactly_and_its_loss_falls(denoiser_run, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "interrupted"
    state = train_denoiser(tiny_denoiser_config(), out, progress=False, stop_after_epoch=1)
    assert state.exists() and not (out / "denoiser.safetensors").exists()
    assert len(list(csv.DictReader(open(out / "metrics.csv")))) == 1
    final = train_denoiser(tiny_denoiser_config(), out, progress=False)  # resumes after epoch 1
    assert not state.exists()
    a, b = load_file(str(final)), load_file(str(denoiser_run))
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    resumed = list(csv.DictReader(open(out / "metrics.csv")))
    reference = list(csv.DictReader(open(denoiser_run.parent / "metrics.csv")))
    assert [(r["step"], r["loss"]) for r in resumed] == [(r["step"], r["loss"]) for r in reference]
    assert float(reference[-1]["loss"]) < 0.8 * float(reference[0]["loss"])
    config = read_checkpoint_config(final)
    assert config["kind"] == "denoiser" and config["model"]["arch"] == "ddpm_unet"
    assert config["model"]["scheduler"] == {**SCHEDULER_DEFAULTS}
    assert config["data"]["name"] == "digits"
    # same settings again: nothing to do; other settings into the same folder: refused
    assert train_denoiser(tiny_denoiser_config(), out, progress=False) == final
    from rrcm.errors import UserError

    with pytest.raises(UserError, match="different settings"):
        train_denoiser(tiny_denoiser_config(lr=1e-3), out, progress=False)


def test_train_denoiser_dry_run(tmp_path, capsys):
    out = tmp_path / "den"
    code, printed, _ = run_cli(["train-denoiser", "--preset", "digits-denoiser", "--epochs", 3, "--out", out,
                                "--dry-run"], capsys)
    assert code == 0
    resolved = json.loads(printed)
    assert resolved["train"]["epochs"] == 3 and resolved["train"]["lr"] == 1e-3  # flag over preset
    assert resolved["model"]["unet"]["block_out_channels"] == [32, 64]
    assert resolved["model"]["unet"]["sample_size"] == 8
    assert not out.exists()



@pytest.mark.parametrize("layout", ["flat", "pipeline"])
def test_pretrained_denoiser_folder(layout, denoiser_run, clean_classifier, dds_checkpoint, tmp_path, capsys):
    """A local diffusers folder (what a hub download gives) assembles to the same model as our checkpoint."""
    from diffusers import DDPMScheduler

    unet, _ = load_denoiser(denoiser_run)
    folder = tmp_path / "hf"
    unet.save_pretrained(folder / ("unet" if layout == "pipeline" else ""))
    DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02).save_pretrained(
        folder / ("scheduler" if layout == "pipeline" else ""))
    out = tmp_path / "dds" / "model.safetensors"
    code, _, err = run_cli(["dds", "assemble", "--pretrained-denoiser", folder, "--classifier", clean_classifier,
                            "--sigma", 0.25, "--out", out], capsys)
    assert code == 0, err
    config = read_checkpoint_config(out)
    assert config["dds"]["denoiser"] == {"pretrained": str(folder)}
    assert config["model"]["timestep"] == EXPECTED_T[0.25]
    ours, _ = load_checkpoint(dds_checkpoint)
    theirs, _ = load_checkpoint(out)
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))

# -- bad input -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mnist_classifier(tmp_path_factory):
    """An (untrained) MNIST-shaped classifier checkpoint: 28×28, a different data set from digits."""
    model_cfg = model_config("lenet5", num_classes=10, in_channels=1, image_size=28, mean=[0.1307], std=[0.3081])
    path = tmp_path_factory.mktemp("mnist_cls") / "model.safetensors"
    data = {"name": "mnist", "num_classes": 10, "channels": 1, "image_size": 28, "classes": [str(i) for i in range(10)],
            "mean": [0.1307], "std": [0.3081]}
    save_checkpoint(path, build_model(model_cfg), {"kind": "classifier", "method": "clean", "sigma": 0.25,
                                                   "model": model_cfg, "data": data})
    return path


def test_assemble_bad_input(denoiser_run, clean_classifier, mnist_classifier, tmp_path, capsys, monkeypatch):
    out = tmp_path / "dds" / "model.safetensors"
    base = ["dds", "assemble", "--out", out]
    cases = [
        (["--denoiser", denoiser_run, "--classifier", mnist_classifier, "--sigma", 0.25], r"differ in image size"),
        (["--denoiser", denoiser_run, "--classifier", clean_classifier, "--sigma", 100], r"too large"),
        (["--denoiser", denoiser_run, "--classifier", clean_classifier, "--sigma", 0], r"sigma must be a positive"),
        (["--classifier", clean_classifier, "--sigma", 0.25], r"exactly one of --denoiser"),
        (["--denoiser", clean_classifier, "--classifier", clean_classifier, "--sigma", 0.25], r"is not a denoiser"),
        (["--denoiser", denoiser_run, "--classifier", denoiser_run, "--sigma", 0.25], r"is not a classifier"),
        (["--denoiser", denoiser_run, "--classifier", clean_classifier, "--sigma", 0.25, "--steps", 0],
         r"--steps must be at least 1"),
        (["--denoiser", tmp_path / "missing.safetensors", "--classifier", clean_classifier, "--sigma", 0.25],
         r"checkpoint not found"),
    ]
    for extra, pattern in cases:
        code, _, err = run_cli(base + extra, capsys)
        assert_one_line_error(code, err, pattern)
    # a hub id without network: one line, nothing downloaded (HF_HUB_OFFLINE keeps it off the network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli(base + ["--pretrained-denoiser", "google/ddpm-cifar10-32", "--classifier", clean_classifier,
                                   "--sigma", 0.25], capsys)
    assert_one_line_error(code, err, r"cannot load the pre-trained denoiser 'google/ddpm-cifar10-32'")
    assert not out.parent.exists()


def test_train_denoiser_bad_input(tmp_path, capsys):
    for extra, pattern in ((["--size", "huge"], r"unknown denoiser size"),
                           (["--beta-start", "0.1", "--beta-end", "0.01"], r"betas must satisfy"),
                           (["--epochs", "0"], r"epochs must be at least 1"),
                           (["--preset", "no-such-preset"], r"unknown preset")):
        code, _, err = run_cli(["train-denoiser", "--out", tmp_path / "den", "--dry-run", *extra], capsys)
        assert_one_line_error(code, err, pattern)
