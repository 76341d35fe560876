"""Pre-training pieces: InfoNCE, the EMA target, global batch norm, and distributed = single process."""

import math
import subprocess
import sys
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


@pytest.mark.slow
def test_distributed_step_equals_single_process(tmp_path, cli_env):
    from tests.helpers.contrastive_case import build_case, loss_and_grads

    model, batch, sigmas = build_case(distributed=False)
    loss, grads = loss_and_grads(model, model, batch, sigmas)
    out = tmp_path / "ddp.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(REPO / "tests" / "helpers" / "ddp_step.py"), str(out)]
    env = dict(cli_env, PYTHONPATH=str(REPO))
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = torch.load(out, weights_only=True)
    assert ddp["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    assert grads.keys() <= ddp["grads"].keys()
    for name in ddp["grads"].keys() - grads.keys():  # unused here: averaged as zero there
        assert not ddp["grads"][name].any(), name
    for name, grad in grads.items():  # equal up to float32 summation order
        assert (ddp["grads"][name] - grad).norm() <= 1e-4 * grad.norm() + 1e-9, name
