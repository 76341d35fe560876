"""The rRCM authors' pre-training recipe, pinned to hand-computed values (issue 16)."""

import json
import math

import pytest

from rrcm import diffusion as D
from rrcm.train.contrastive import ema_momentum


@pytest.mark.parametrize("fraction,sharpness,expected", [
    (0.0, 15, 0.99),
    # e = sqrt(0.2 * (0.9999² − 0.99²) + 0.99²) = 0.9919879, c = 2 / (1 + exp(−15 · 0.2007983)) − 1 = 0.9062;
    # μ = 0.99 + c · 0.0099
    (0.2, 15, 0.9989716223419187),
    (0.2, 10, 0.9975563294697192),
    (0.5, 15, 0.999889257177022),
    (0.5, 10, 0.9997691087447345),
    # e = μ₁ from k = K on, and c = 2 / (1 + e^−A) − 1 stays just below 1
    (1.0, 15, 0.99 + 0.0099 * (2 / (1 + math.exp(-15)) - 1)),
    (2.0, 10, 0.99 + 0.0099 * (2 / (1 + math.exp(-10)) - 1)),
])
def test_the_authors_ema_rate(fraction, sharpness, expected):
    assert ema_momentum(int(fraction * 1000), 1000, "rrcm", 0.99, 0.9999, sharpness) == pytest.approx(expected, rel=1e-13)


def test_the_earlier_ema_schedule_moves_the_target_9x_and_45x_faster():
    # the comparison at A = 15: (1 − μ_ours) / (1 − μ_theirs) at 20% and 50% of training
    def speed(fraction):
        return (1 - ema_momentum(fraction, 100, "sigmoid")) / (1 - ema_momentum(fraction, 100, "rrcm"))

    assert speed(20) == pytest.approx(9.33, abs=0.01) and speed(50) == pytest.approx(45.6, abs=0.1)


@pytest.mark.parametrize("total,stage", [(30, 13), (3_000, 1_293), (300_000, 129_203)])
def test_the_authors_curriculum(total, stage):
    # K' = ceil(K / log2(ceil(80 / 20) + 1)) = ceil(K / 2.3219...): 21 points at k = 0 only, 41 while k <= K', 81 after
    assert stage == math.ceil(total / math.log2(5))
    assert [D.curriculum_num_points(k, total) for k in (0, 1, stage, stage + 1, total - 1, total, 10 * total)] == \
        [21, 41, 41, 81, 81, 81, 81]
    share_41 = sum(D.curriculum_num_points(k, total) == 41 for k in range(min(total, 3_000)))
    if total <= 3_000:
        assert share_41 == stage  # 43% of training


def test_the_earlier_curriculum_spends_a_third_on_each_grid():
    got = [D.curriculum_num_points(k, 30, schedule="equal-stages") for k in range(30)]
    assert got == [21] * 10 + [41] * 10 + [81] * 10
    with pytest.raises(ValueError, match="unknown curriculum"):
        D.curriculum_num_points(0, 30, schedule="thirds")


def test_pretraining_logs_the_authors_schedules_per_step_and_its_config_says_so(tmp_path):
    import csv

    from rrcm.train.pretrain import pretrain
    from tests.test_pretrain import small_pretrain

    cfg = small_pretrain(steps=7, batch_size=16, log_every=1, checkpoint_every=7)
    assert (cfg.ema_schedule, cfg.curriculum, cfg.symmetric, cfg.view_noise, cfg.trajectory_augment,
            cfg.clip_during_warmup) == ("rrcm", "rrcm", True, "shared", "flip", False)  # the authors' by default
    pretrain(cfg, tmp_path, progress=False)
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    # a row per step k = 0..6 (its `step` column counts the steps done, k + 1); K' = ceil(7 / log2 5) = 4
    assert [int(r["num_points"]) for r in rows] == [21, 41, 41, 41, 41, 81, 81]
    assert [float(r["ema"]) for r in rows] == [ema_momentum(k, 7, "rrcm", 0.99, 0.9999, 15.0) for k in range(7)]
    resolved = json.loads((tmp_path / "config.json").read_text())["pretrain"]
    assert resolved["ema_schedule"] == "rrcm" and resolved["ema_sharpness"] == 15.0 and resolved["curriculum"] == "rrcm"


@pytest.mark.parametrize("view_noise", ["shared", "independent"])
def test_the_views_share_the_trajectory_noise_as_the_authors_do(view_noise):
    import torch

    from rrcm.data import load_dataset
    from rrcm.train.engine import StepContext
    from rrcm.train.pretrain import make_batch
    from tests.test_pretrain import small_pretrain

    ctx = StepContext(step=0, rank=0, seed=0, device=torch.device("cpu"))
    batch = make_batch(load_dataset("digits", "train"), torch.arange(4), small_pretrain(view_noise=view_noise), ctx)
    shared = torch.equal(batch["eps1"], batch["eps"]) and torch.equal(batch["eps2"], batch["eps"])
    assert shared == (view_noise == "shared")
    assert not torch.equal(batch["eps"][0], batch["eps"][1])


# ---- fine-tuning as the authors do it (rrcm_tune.py and configs/*_finetune.py)

def test_the_authors_per_epoch_schedule_by_hand():
    from rrcm.train.schedule import epoch_warmup_cosine

    # E = 10 epochs, W = 2 warm-up epochs: e / W up to W, then 0.5 (1 + cos(pi (e - W) / (E - W)))
    expected = {0: 0.0, 1: 0.5, 2: 1.0, 3: 0.9619397662556434, 6: 0.5, 9: 0.03806023374435663}
    for epoch, factor in expected.items():
        assert epoch_warmup_cosine(0.3, epoch, 10, 2) == pytest.approx(0.3 * factor, rel=1e-12, abs=1e-15)
    assert epoch_warmup_cosine(1.0, 0, 10, 0) == 1.0  # no warm-up: the cosine starts at its peak


def test_finetuning_sets_the_rate_once_per_epoch_with_epoch_zero_at_zero(tmp_path):
    import csv

    from rrcm.train.classifier import train_classifier
    from rrcm.train.config import TrainConfig
    from rrcm.train.schedule import epoch_warmup_cosine

    tiny = dict(data="digits", arch="lenet", sigma=0.25, epochs=4, batch_size=256, lr=0.05, warmup_epochs=2,
                device="cpu")
    for schedule in ("epoch", "step"):
        train_classifier(TrainConfig(**tiny, lr_schedule=schedule), tmp_path / schedule, progress=False)
    with open(tmp_path / "epoch" / "metrics.csv") as f:
        per_epoch = [float(r["lr"]) for r in csv.DictReader(f)]
    with open(tmp_path / "step" / "metrics.csv") as f:
        per_step = [float(r["lr"]) for r in csv.DictReader(f)]
    assert per_epoch == [epoch_warmup_cosine(0.05, e, 4, 2) for e in range(4)]
    assert per_epoch[0] == 0.0 and per_step[0] > 0  # rrcm's schedule warms up within the first epoch
    with pytest.raises(Exception, match="unknown learning-rate schedule 'daily'; choose one of step, epoch"):
        train_classifier(TrainConfig(**tiny, lr_schedule="daily"), tmp_path / "bad", progress=False)


def test_rrcm_finetune_defaults_to_the_authors_choices():
    from rrcm.cli import FINETUNE_DEFAULTS, load_preset

    assert FINETUNE_DEFAULTS["lr_schedule"] == "epoch" and "grad_clip" not in FINETUNE_DEFAULTS  # no clipping
    cifar, imagenet = load_preset("cifar10-b-finetune"), load_preset("imagenet-b-finetune")
    assert (cifar["augmentation"], cifar["precision"], cifar["lr_schedule"]) == ("resized-crop-flip", "fp32", "epoch")
    assert "feature_norm" not in cifar.get("arch_options", {})  # the model default: no LayerNorm before the head
    assert (imagenet["augmentation"], imagenet["precision"]) == ("randaugment", "fp32")
    assert imagenet["arch_options"] == {"feature_norm": True}
    for name in ("imagenet-b-pretrain", "imagenet-s-pretrain"):
        preset = load_preset(name)
        assert (preset["encoder_init"], preset["freeze_patch_embed"]) == ("moco-v3", True)
    assert "encoder_init" not in load_preset("cifar10-b-pretrain")


def test_the_authors_cifar10_augmentation_is_a_resized_crop_and_a_flip():
    import torch

    from rrcm.data.augment import train_augment

    x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    strong = train_augment("cifar10", "resized-crop-flip")
    a = strong(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, strong(x, torch.Generator().manual_seed(1))) and a.shape == x.shape
    assert 0 <= a.min() and a.max() <= 1
    # a crop of at least 40% of the area keeps most of each image's content: mean colour stays close,
    # and no image is left untouched (a standard pad-crop moves pixels by whole steps, this resamples)
    assert (a.mean((1, 2, 3)) - x.mean((1, 2, 3))).abs().max() < 0.1
    assert all(not torch.equal(a[i], x[i]) and not torch.equal(a[i], x[i].flip(-1)) for i in range(64))
    assert train_augment("mnist")(x, torch.Generator()) is x  # grey data keep their standard (none)
    with pytest.raises(Exception, match="unknown augmentation 'heavy'"):
        train_augment("cifar10", "heavy")


def test_moco_v3_initialisation_and_the_frozen_patch_embedding(tmp_path):
    import torch

    from rrcm.models.time_vit import TimeConditionedViT, moco_v3_init
    from rrcm.train.pretrain import pretrain
    from tests.test_pretrain import small_pretrain

    torch.manual_seed(0)
    enc = TimeConditionedViT(image_size=16, patch_size=4, in_channels=3, width=48, depth=2, heads=4)
    moco_v3_init(enc)
    qkv = enc.blocks[0].attn.qkv.weight  # (3w, w): each of q, k, v is Xavier over (w, w)
    bound = math.sqrt(6 / (48 + 48))
    assert qkv.abs().max() <= bound and qkv.abs().max() > 0.95 * bound
    fc1 = enc.blocks[0].mlp[0].weight  # (4w, w)
    assert fc1.abs().max() <= math.sqrt(6 / (48 + 192)) < bound
    patch_bound = math.sqrt(6 / (3 * 16 + 48))
    assert enc.patch_embed.weight.abs().max() <= patch_bound and torch.count_nonzero(enc.patch_embed.bias) == 0
    assert torch.count_nonzero(enc.blocks[0].mlp[0].bias) == 0

    from rrcm.checkpoint import load_weights
    from rrcm.data import load_dataset
    from rrcm.distributed import init_distributed
    from rrcm.train.pretrain import PretrainTask, resolve_pretrain_config
    from rrcm.smoothing.noise import derive_seed

    cfg = small_pretrain(steps=3, encoder_init="moco-v3", freeze_patch_embed=True)
    dataset = load_dataset("digits", "train")
    torch.manual_seed(derive_seed(cfg.seed, 0))  # as the engine seeds the initial weights
    initial = PretrainTask(cfg, dataset, resolve_pretrain_config(cfg, dataset.info)).build(init_distributed("cpu"))
    assert not any(p.requires_grad for p in initial.encoder.patch_embed.parameters())
    trained = load_weights(pretrain(cfg, tmp_path, progress=False))
    assert torch.equal(trained["encoder.patch_embed.weight"], initial.encoder.patch_embed.weight)
    assert not torch.equal(trained["encoder.blocks.0.attn.qkv.weight"], initial.encoder.blocks[0].attn.qkv.weight)


def test_the_authors_imagenet_augmentation_is_crop_flip_then_randaugment(monkeypatch):
    import torch

    from rrcm.data import augment, randaugment
    from rrcm.data.contrastive import random_resized_crop

    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    transform = augment.train_augment("imagefolder", "randaugment")
    out = transform(x, torch.Generator().manual_seed(2))
    assert out.shape == x.shape and torch.equal(out, transform(x, torch.Generator().manual_seed(2)))
    # RandAugment runs last, on timm's resized crop (scale 0.08-1) + flip, drawing from the same generator
    seen = {}
    monkeypatch.setattr(randaugment, "rand_augment", lambda y, g: seen.setdefault("x", y))
    transform(x, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    expected = augment.random_hflip(random_resized_crop(x, g, scale=(0.08, 1.0)), g)
    assert torch.equal(seen["x"], expected) and not torch.equal(out, expected)
