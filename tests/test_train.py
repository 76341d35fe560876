"""Training objectives, the training loop (learning, resume) and checkpoints."""

import csv
import math

import pytest
import torch

from rrcm.checkpoint import load_checkpoint, load_state, read_checkpoint_config, save_checkpoint, save_state
from rrcm.errors import UserError
from rrcm.models import build_model, model_config
from rrcm.train.config import TrainConfig
from rrcm.train.classifier import STATE_FILE, engine_settings, train_classifier
from rrcm.train.schedule import warmup_cosine
from rrcm.train.objectives import consistency_losses, consistency_objective, gaussian_objective


def test_consistency_losses_known_values():
    y = torch.tensor([0, 1])
    same = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    xent, kl, entropy = consistency_losses([same, same.clone()], y)
    assert kl.item() == pytest.approx(0.0, abs=1e-7)  # identical copies agree with their mean
    assert xent.item() == pytest.approx(torch.nn.functional.cross_entropy(same, y).item(), rel=1e-6)
    uniform = torch.zeros(2, 3)
    _, _, entropy_uniform = consistency_losses([uniform, uniform], y)
    assert entropy_uniform.item() == pytest.approx(math.log(3), rel=1e-6)
    # copies p1 = (s, 1-s) and p2 = (1-s, s): mean (1/2, 1/2), and KL(p̄ ‖ p_i) = -log 2 - log(s(1-s))/2 each
    a, b = torch.tensor([[1.0, -1.0]]), torch.tensor([[-1.0, 1.0]])
    s = 1 / (1 + math.exp(-2.0))
    _, kl, entropy = consistency_losses([a, b], torch.tensor([0]))
    assert kl.item() == pytest.approx(-math.log(2) - 0.5 * math.log(s * (1 - s)), rel=1e-5)
    assert entropy.item() == pytest.approx(math.log(2), rel=1e-5)


def test_objectives_add_noise_on_pixels():
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(x)
            return torch.zeros(x.shape[0], 2, requires_grad=True)

    x, y = torch.full((500, 1, 4, 4), 0.5), torch.zeros(500, dtype=torch.long)
    gaussian_objective(Spy(), x, y, sigma=0.25, generator=torch.Generator().manual_seed(0))
    assert (seen[0] - 0.5).std().item() == pytest.approx(0.25, rel=0.03)
    out = consistency_objective(Spy(), x, y, sigma=0.25, generator=torch.Generator().manual_seed(0), num_noise=3)
    assert seen[1].shape[0] == 1500 and out.logits.shape == (500, 2)
    assert not torch.equal(seen[1][:500], seen[1][500:1000])  # independent copies


def test_learning_rate_warmup_then_cosine():
    cfg = TrainConfig(lr=0.1, warmup_epochs=1, epochs=3, batch_size=10)
    settings = engine_settings(cfg, num_examples=95)  # 10 steps per epoch, the last one of 5 examples
    assert (settings.total_steps, settings.warmup_steps, settings.log_every) == (30, 10, 10)

    def learning_rate(step):
        return warmup_cosine(settings.lr, step, settings.total_steps, settings.warmup_steps)

    assert learning_rate(0) == pytest.approx(0.01)
    assert learning_rate(9) == pytest.approx(0.1)
    assert learning_rate(20) == pytest.approx(0.05)
    assert learning_rate(30) == pytest.approx(0.0)


TINY = dict(data="digits", arch="lenet", sigma=0.25, epochs=3, batch_size=64, lr=0.05, device="cpu")


def test_training_learns_and_resume_follows_the_same_curve(tmp_path):
    straight = train_classifier(TrainConfig(**TINY, method="consistency", num_noise=2, lbd=1.0), tmp_path / "a", progress=False)
    # the same run, interrupted after epoch 1 and resumed
    cfg = TrainConfig(**TINY, method="consistency", num_noise=2, lbd=1.0)
    assert train_classifier(cfg, tmp_path / "b", progress=False, stop_after_epoch=1).name == STATE_FILE
    assert load_state(tmp_path / "b" / STATE_FILE)["epoch"] == 1
    resumed = train_classifier(cfg, tmp_path / "b", progress=False)
    a, b = load_checkpoint(straight)[0].state_dict(), load_checkpoint(resumed)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    def curve(path):
        with open(path) as f:
            return [(r["epoch"], r["loss"], r["noisy_train_accuracy"]) for r in csv.DictReader(f)]

    assert curve(tmp_path / "a" / "metrics.csv") == curve(tmp_path / "b" / "metrics.csv")

    def rows_but_time(path):  # `seconds` is wall-clock time; every other column must be reproduced
        with open(path) as f:
            return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]

    assert rows_but_time(tmp_path / "a" / "metrics.csv") == rows_but_time(tmp_path / "b" / "metrics.csv")
    assert (tmp_path / "a" / "config.json").read_bytes() == (tmp_path / "b" / "config.json").read_bytes()
    losses = [float(row[1]) for row in curve(tmp_path / "a" / "metrics.csv")]
    assert losses[-1] < losses[0]
    assert float(curve(tmp_path / "a" / "metrics.csv")[-1][2]) > 0.3  # well above chance (0.1)
    assert not (tmp_path / "a" / STATE_FILE).exists()
    config = read_checkpoint_config(straight)
    assert config["sigma"] == 0.25 and config["method"] == "consistency" and config["data"]["name"] == "digits"
    # a finished run is not trained again; other settings in the same folder are refused
    assert train_classifier(cfg, tmp_path / "a", progress=False) == straight
    with pytest.raises(UserError, match="different settings"):
        train_classifier(TrainConfig(**{**TINY, "sigma": 0.5}), tmp_path / "a", progress=False)


@pytest.mark.parametrize("change,message", [
    (dict(method="mixup"), "unknown method"),
    (dict(sigma=0.0), "sigma must be a positive"),
    (dict(sigma=-1.0), "sigma must be a positive"),
    (dict(epochs=0), "epochs must be at least 1"),
    (dict(method="consistency", num_noise=1), "num-noise >= 2"),
    (dict(arch="resnet9000"), "invalid model options|unknown arch"),
])
def test_bad_training_options(change, message, tmp_path):
    with pytest.raises(UserError, match=message):
        train_classifier(TrainConfig(**{**TINY, **change}), tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


def test_unknown_option_in_config_is_named():
    with pytest.raises(UserError, match="unknown training option.*sigmaa"):
        TrainConfig.from_dict({"sigmaa": 0.5})


def test_checkpoint_round_trip_and_corruption(tmp_path):
    cfg = model_config("lenet5", num_classes=10, in_channels=1, image_size=8, mean=[0.3], std=[0.4])
    model = build_model(cfg).eval()
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, {"model": cfg, "sigma": 0.5})
    loaded, config = load_checkpoint(path)
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(loaded(x), model(x)) and config["sigma"] == 0.5
    data = path.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt, truncated"):
        load_checkpoint(tmp_path / "truncated.safetensors")
    (tmp_path / "garbage.safetensors").write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="not a safetensors file"):
        load_checkpoint(tmp_path / "garbage.safetensors")
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(UserError, match="only checkpoints written by rrcm"):
        load_checkpoint(tmp_path / "foreign.safetensors")


def test_training_state_round_trip(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "step": 7, "rng": [torch.get_rng_state()], "pair": (1, "a")}
    save_state(tmp_path / "s.safetensors", state)
    back = load_state(tmp_path / "s.safetensors")
    assert back["step"] == 7 and back["pair"] == (1, "a") and torch.equal(back["rng"][0], state["rng"][0])
    opt2 = torch.optim.AdamW(model.parameters())
    opt2.load_state_dict(back["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


@pytest.mark.slow
def test_torchrun_two_process_training_runs_and_checkpoints(tmp_path, cli_env):
    from tests.helpers.torchrun import torchrun

    out = tmp_path / "ddp"
    torchrun(["-m", "rrcm", "train", "--data", "digits", "--arch", "lenet5", "--sigma", "0.25", "--epochs", "2",
              "--batch-size", "64", "--device", "cpu", "--out", str(out), "--quiet"], tmp_path / "logs", env=cli_env)
    model, config = load_checkpoint(out / "model.safetensors")
    assert config["epochs_trained"] == 2
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(math.isfinite(float(r["loss"])) for r in rows)


@pytest.mark.parametrize("method,noise_free", [("clean", True), ("gaussian", False)])
def test_clean_method_trains_without_noise(method, noise_free, tmp_path, monkeypatch):
    """Every input the model sees in clean training is exactly a training image (σ is set, to show it is
    ignored); under Gaussian augmentation none is, which shows the check can fail."""
    import rrcm.train.classifier as loop
    from rrcm.data import load_dataset

    seen = []

    def build_recording_model(config):
        model = build_model(config)
        model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
        return model

    monkeypatch.setattr(loop, "build_model", build_recording_model)
    cfg = TrainConfig(**{**TINY, "method": method, "sigma": 0.5, "epochs": 1, "augment": False})
    checkpoint = train_classifier(cfg, tmp_path, progress=False)
    assert read_checkpoint_config(checkpoint)["method"] == method
    images = load_dataset("digits", "train").batch(range(1297))[0].flatten(1)
    known = {row.numpy().tobytes() for row in images}
    inputs = torch.cat(seen).flatten(1)
    assert len(inputs) >= 1297 - 64  # one epoch, the last partial batch may be dropped
    exact = [row.numpy().tobytes() in known for row in inputs]
    assert all(exact) if noise_free else not any(exact)
