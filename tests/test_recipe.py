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
