"""Pre-training pieces: InfoNCE, the EMA target, global batch norm, and distributed = single process."""

import math
from pathlib import Path

import pytest
import torch

from rrcm.train.contrastive import EMATarget, GlobalBatchNorm1d, ema_momentum, info_nce

REPO = Path(__file__).resolve().parents[1]


def test_info_nce_known_value():
    # Orthonormal queries equal to their keys: logits are I/τ, so each row's loss is
    # log(1 + (B − 1)·exp(−1/τ)).
    batch, tau = 5, 0.2
    q = torch.eye(batch, 16)[:batch]
    loss = info_nce(q, q.clone(), tau)
    assert loss.item() == pytest.approx(math.log(1 + (batch - 1) * math.exp(-1 / tau)), rel=1e-6)
    # scale-invariant (features are normalised), and a key set that matches nobody costs log B
    assert info_nce(3 * q, q, tau).item() == pytest.approx(loss.item(), rel=1e-6)
    assert info_nce(q, torch.zeros(batch, 16) + 1.0, tau).item() == pytest.approx(math.log(batch), rel=1e-6)


def test_ema_target_moves_at_its_rate_and_has_no_gradient():
    online = torch.nn.Linear(3, 2)
    target = EMATarget(online)
    before = target.network.weight.clone()
    with torch.no_grad():
        online.weight.add_(1.0)
    target.update(online, momentum=0.99)
    assert torch.allclose(target.network.weight, 0.99 * before + 0.01 * online.weight)
    assert all(not p.requires_grad for p in target.parameters())


def test_ema_schedules():
    assert ema_momentum(0, 100) == ema_momentum(99, 100) == 0.99
    assert ema_momentum(0, 100, "sigmoid") == pytest.approx(0.99)
    assert ema_momentum(100, 100, "sigmoid") == pytest.approx(0.9999)
    ramp = [ema_momentum(s, 100, "sigmoid") for s in range(0, 101, 10)]
    assert ramp == sorted(ramp) and ramp[5] == pytest.approx((0.99 + 0.9999) / 2)


def test_trajectory_key_carries_no_gradient():
    from tests.helpers.contrastive_case import build_case

    model, batch, sigmas = build_case(distributed=False)
    seen = []
    original = model.encoder.forward

    def spy(z, sigma):
        out = original(z, sigma)
        seen.append((float(sigma), out.requires_grad))
        return out

    model.encoder.forward = spy
    model(batch, *sigmas, temperature=0.2, instance_weight=0.0)
    assert seen == [(1.5, True), (1.2, False)]  # query on the noisier point; stop-gradient key


def test_global_batchnorm_equals_batchnorm_in_one_process():
    torch.manual_seed(0)
    plain = torch.nn.BatchNorm1d(4)
    global_bn = GlobalBatchNorm1d(4)
    x = torch.randn(6, 4)
    assert torch.allclose(plain(x), global_bn(x))


# How far a float32 gradient of the step may lie from the float64 one, relative to the whole gradient's
# norm (all parameters as one vector). Float32 rounding, amplified by the step's conditioning (InfoNCE at
# τ = 0.2, layer and batch norms over 4–8 samples), puts both the single-process and the two-process
# results 25–35 ε₃₂ away on AVX-512, AVX2 and the scalar kernels at one thread (ATEN_CPU_CAPABILITY);
# 256 ε₃₂ ≈ 3.1e-5 leaves a margin of 8 for other CPUs and BLAS builds. Planted bugs land far outside
# (two processes): negatives not gathered across processes 0.43, local batch-norm statistics in the
# projector 1.7, the statistics' gradient not reduced across processes 2.7, gradients summed instead of
# averaged 1.0. A single parameter's relative error is no measure: the final norm's bias, a small sum of
# large cancelling terms, lies ~9e-5 (~760 ε₃₂) from float64 in one process on every kernel set.
EPS32 = torch.finfo(torch.float32).eps
GRADIENT_TOLERANCE = 256 * EPS32


def gradient_error(grads, reference):
    """‖g − g₆₄‖ / ‖g₆₄‖ over all parameters, and the parameters contributing most to it."""
    diffs = {n: (grads[n].double() - reference[n]).norm().item() for n in reference}
    total = math.sqrt(sum(d * d for d in diffs.values()))
    norm = math.sqrt(sum(g.norm().item() ** 2 for g in reference.values()))
    worst = sorted(diffs, key=diffs.get, reverse=True)[:3]
    return total / norm, ", ".join(f"{n} {diffs[n] / norm / EPS32:.1f} ε₃₂" for n in worst)


@pytest.mark.slow
def test_distributed_step_equals_single_process(tmp_path, cli_env, one_thread):
    from tests.helpers.contrastive_case import build_case, loss_and_grads
    from tests.helpers.torchrun import torchrun

    model, batch, sigmas = build_case(distributed=False)
    loss, grads = loss_and_grads(model, model, batch, sigmas)
    model64, batch64, _ = build_case(distributed=False, dtype=torch.float64)
    loss64, grads64 = loss_and_grads(model64, model64, batch64, sigmas)
    # the reference is float64 end to end but for float32 islands the code keeps on purpose (the time
    # embedding's constants, InfoNCE's cast, measured < 1 ε₃₂ on the result)
    assert all(g.dtype == torch.float64 for g in grads64.values())
    out = tmp_path / "ddp.pt"
    torchrun([REPO / "tests" / "helpers" / "ddp_step.py", out], tmp_path / "logs", env=cli_env, extra_path=[REPO],
             cwd=REPO)
    ddp = torch.load(out, weights_only=True)
    assert grads64.keys() <= ddp["grads"].keys()
    for name in ddp["grads"].keys() - grads64.keys():  # unused here: averaged as zero there
        assert not ddp["grads"][name].any(), name
    for side, side_loss, side_grads in (("one process", loss, grads), ("two processes", ddp["loss"], ddp["grads"])):
        error, worst = gradient_error(side_grads, grads64)
        loss_error = abs(side_loss.double() - loss64).item() / abs(loss64).item()
        assert error <= GRADIENT_TOLERANCE, (f"{side}: float32 gradient {error / EPS32:.1f} ε₃₂ from float64 (allowed "
                                             f"{GRADIENT_TOLERANCE / EPS32:.0f}); most from {worst}")
        assert loss_error <= GRADIENT_TOLERANCE, f"{side}: float32 loss {loss_error / EPS32:.1f} ε₃₂ from float64"
