"""EDM conventions in rrcm.diffusion, checked against values computed independently with plain math."""

import json
import math

import numpy as np
import pytest
import torch

from rrcm import diffusion as D


def _karras(i, n, lo=0.002, hi=80.0, rho=7.0):
    """Independent scalar formula for the i-th point of an n-point descending Karras grid."""
    return (hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho


def _nearest_brute(value, grid_list):
    """Nearest element by brute force; ties to the larger value."""
    best = None
    for j, g in enumerate(grid_list):
        d = abs(g - value)
        if best is None or d < best[0] or (d == best[0] and g > grid_list[best[1]]):
            best = (d, j)
    return best[1], grid_list[best[1]]


def test_constants():
    assert (D.SIGMA_MIN, D.SIGMA_MAX, D.RHO, D.SIGMA_DATA) == (0.002, 80.0, 7.0, 0.5)
    assert (D.CURRICULUM_START, D.CURRICULUM_END) == (21, 81)


# --------------------------------------------------------------------------- Karras grid


@pytest.mark.parametrize("n", [2, 21, 41, 81])
def test_karras_ends_length_order(n):
    s = D.karras_sigmas(n)
    assert s.dtype == torch.float64
    assert s.shape == (n,)
    assert s[0].item() == 80.0
    assert s[-1].item() == 0.002
    assert bool((s[:-1] > s[1:]).all())


def test_karras_values_by_hand():
    s = D.karras_sigmas(21)
    mid = (80 ** (1 / 7) + 0.5 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert s[10].item() == pytest.approx(mid, rel=1e-12)
    for i in range(21):
        assert s[i].item() == pytest.approx(_karras(i, 21), rel=1e-12)
    # a value worked out by hand: 80^(1/7) = 1.8691..., 0.002^(1/7) = 0.4115..., midpoint^7 ~ 2.53
    assert 2.4 < mid < 2.7


def test_karras_custom_range():
    s = D.karras_sigmas(5, sigma_min=0.5, sigma_max=2.0, rho=1.0)  # rho = 1: linear
    assert s.tolist() == pytest.approx([2.0, 1.625, 1.25, 0.875, 0.5], rel=1e-12)


def test_karras_grids_nest():
    g21, g41, g81 = D.karras_sigmas(21), D.karras_sigmas(41), D.karras_sigmas(81)
    for i in range(21):
        assert g41[2 * i].item() == pytest.approx(g21[i].item(), rel=1e-12)
        assert g81[4 * i].item() == pytest.approx(g21[i].item(), rel=1e-12)
    for i in range(41):
        assert g81[2 * i].item() == pytest.approx(g41[i].item(), rel=1e-12)


@pytest.mark.parametrize("bad", [0, 1, -3])
def test_karras_rejects_too_few_points(bad):
    with pytest.raises(ValueError):
        D.karras_sigmas(bad)


# --------------------------------------------------------------------------- curriculum


def test_curriculum_300_steps():
    for step in range(300):
        expected = 21 if step < 100 else 41 if step < 200 else 81
        assert D.curriculum_num_points(step, 300, schedule="equal-stages") == expected, step


def test_curriculum_ceil_stage_length():
    got = [D.curriculum_num_points(step, 10, schedule="equal-stages") for step in range(10)]
    assert got == [21] * 4 + [41] * 4 + [81] * 2  # stage length ceil(10 / 3) = 4


def test_curriculum_past_end_and_tiny_runs():
    ours = dict(schedule="equal-stages")
    assert D.curriculum_num_points(300, 300, **ours) == 81
    assert D.curriculum_num_points(10**6, 300, **ours) == 81
    # steps at or past total_steps are always on the final grid, even when ceil leaves it no stage
    assert D.curriculum_num_points(0, 1, **ours) == 21
    assert D.curriculum_num_points(1, 1, **ours) == 81
    assert [D.curriculum_num_points(s, 4, **ours) for s in range(5)] == [21, 21, 41, 41, 81]


def test_curriculum_other_ratios():
    for schedule in D.CURRICULA:
        assert [D.curriculum_num_points(s, 2, start=11, end=11, schedule=schedule) for s in range(3)] == [11, 11, 11]
    assert [D.curriculum_num_points(s, 4, start=3, end=17, schedule="equal-stages") for s in range(4)] == [3, 5, 9, 17]
    # the authors': K' = ceil(4 / log2(9)) = 2, then 2 * 2^ceil(k / 2) + 1 intervals, capped at 16
    assert [D.curriculum_num_points(s, 4, start=3, end=17) for s in range(6)] == [3, 5, 5, 9, 9, 17]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(step=0, total_steps=10, start=21, end=61),  # ratio 3
        dict(step=0, total_steps=10, start=21, end=70),  # not an integer ratio
        dict(step=0, total_steps=10, start=41, end=21),  # shrinking
        dict(step=0, total_steps=10, start=1, end=81),  # start - 1 = 0
        dict(step=-1, total_steps=10),
        dict(step=0, total_steps=0),
        dict(step=1.5, total_steps=10),
    ],
)
def test_curriculum_rejects(kwargs):
    with pytest.raises(ValueError):
        D.curriculum_num_points(**kwargs)


# --------------------------------------------------------------------------- adjacent index


def test_sample_adjacent_index():
    n = 21
    g = torch.Generator().manual_seed(123)
    draws = [D.sample_adjacent_index(n, g) for _ in range(2000)]
    assert all(isinstance(i, int) and 0 <= i <= n - 2 for i in draws)
    assert set(draws) == set(range(n - 1))  # covers 0..19, never 20
    g2 = torch.Generator().manual_seed(123)
    assert [D.sample_adjacent_index(n, g2) for _ in range(2000)] == draws
    assert D.sample_adjacent_index(2, torch.Generator().manual_seed(0)) == 0
    with pytest.raises(ValueError):
        D.sample_adjacent_index(1, torch.Generator())


# --------------------------------------------------------------------------- noising and scalings


def test_add_noise_scalar_and_per_example():
    x = torch.zeros(3, 2, 4, 4)
    eps = torch.ones(3, 2, 4, 4)
    assert torch.equal(D.add_noise(x, 0.5, eps), torch.full_like(x, 0.5))
    assert torch.equal(D.add_noise(x, torch.tensor(2.0), eps), torch.full_like(x, 2.0))
    sig = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)  # dtype follows x
    y = D.add_noise(x, sig, eps)
    assert y.dtype == torch.float32 and y.shape == x.shape
    for b in range(3):
        assert torch.equal(y[b], torch.full((2, 4, 4), float(b + 1)))
    x2 = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(D.add_noise(x2, sig, torch.ones(3, 2)), x2 + torch.tensor([[1.0], [2.0], [3.0]]))
    with pytest.raises(ValueError):
        D.add_noise(x, torch.ones(2), eps)
    with pytest.raises(ValueError):
        D.add_noise(x, 1.0, eps[:2])


def test_c_in_by_hand():
    assert D.c_in(0.002) == pytest.approx(1 / math.sqrt(0.000004 + 0.25), rel=1e-12)
    assert D.c_in(0.002) == pytest.approx(1.99998400, rel=1e-8)  # ~ 2 (1 - 0.002^2 / 0.5)
    assert D.c_in(80.0) == pytest.approx(1 / math.sqrt(6400.25), rel=1e-12)
    assert D.c_in(80.0) == pytest.approx(0.0124997559, rel=1e-8)  # (1/80)(1 - 0.25/12800)
    assert D.c_in(0.5) == pytest.approx(math.sqrt(2), rel=1e-12)
    assert isinstance(D.c_in(1.0), float)
    t = D.c_in(torch.tensor([0.002, 80.0], dtype=torch.float64))
    assert isinstance(t, torch.Tensor)
    assert t.tolist() == pytest.approx([1 / math.sqrt(0.250004), 1 / math.sqrt(6400.25)], rel=1e-12)
    assert isinstance(D.c_in(np.array([0.5])), np.ndarray)


def test_c_noise_by_hand():
    assert D.c_noise(1.0) == 0.0
    assert D.c_noise(math.e) == pytest.approx(250.0, rel=1e-15)
    assert D.c_noise(0.002) == pytest.approx(250 * math.log(0.002), rel=1e-12)  # ~ -1553.7
    assert isinstance(D.c_noise(2.0), float)
    t = D.c_noise(torch.tensor([1.0, math.e], dtype=torch.float64))
    assert t.tolist() == pytest.approx([0.0, 250.0], abs=1e-12)


def test_pixels_to_diffusion():
    x = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert D.pixels_to_diffusion(x).tolist() == [-1.0, -0.5, 0.0, 1.0]


# --------------------------------------------------------------------------- conditioning sigma


def test_smoothing_to_diffusion_sigma():
    assert D.smoothing_to_diffusion_sigma(0.25) == 0.5
    assert D.smoothing_to_diffusion_sigma(0.12) == 0.24
    assert D.smoothing_to_diffusion_sigma(1.0) == 2.0
    with pytest.raises(ValueError):
        D.smoothing_to_diffusion_sigma(float("nan"))


def test_snap_to_grid_ties_and_ends():
    grid = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    assert D.snap_to_grid(1.5, grid) == 2.0  # tie -> larger sigma
    assert D.snap_to_grid(2.5, grid) == 3.0
    assert D.snap_to_grid(1.4, grid) == 1.0
    assert D.snap_to_grid(100.0, grid) == 3.0
    assert D.snap_to_grid(0.0, grid) == 1.0
    asc = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)  # order does not matter
    assert D.snap_to_grid(1.5, asc) == 2.0
    out = D.snap_to_grid(0.5, D.karras_sigmas(81))
    assert type(out) is float and out in D.karras_sigmas(81).tolist()


@pytest.mark.parametrize("sigma_rs", [0.12, 0.25, 0.5, 1.0])
def test_conditioning_sigma(sigma_rs):
    grid81 = [_karras(i, 81) for i in range(81)]
    grid81[0], grid81[-1] = 80.0, 0.002
    idx, value = _nearest_brute(2 * sigma_rs, grid81)
    c = D.conditioning_sigma(sigma_rs)
    assert c["sigma_rs"] == sigma_rs
    assert c["sigma_diffusion"] == 2 * sigma_rs
    assert c["grid_index"] == idx
    assert c["sigma_condition"] == pytest.approx(value, rel=1e-12)
    assert c["sigma_condition"] in D.karras_sigmas(81).tolist()  # an exact grid element
    assert c["sigma_condition"] == D.karras_sigmas(81)[idx].item()
    assert c["grid"] == {"num_points": 81, "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0, "sigma_data": 0.5}
    assert json.loads(json.dumps(c)) == c
    # no neighbour is nearer (brute force already says so; this is the property that matters)
    for j in (idx - 1, idx + 1):
        if 0 <= j < 81:
            assert abs(grid81[j] - 2 * sigma_rs) >= abs(value - 2 * sigma_rs)


def test_conditioning_sigma_other_grid_and_errors():
    c = D.conditioning_sigma(0.25, num_points=21)
    grid21 = [_karras(i, 21) for i in range(21)]
    assert c["grid_index"] == _nearest_brute(0.5, grid21)[0]
    assert c["grid"]["num_points"] == 21
    for bad in [0.0, -0.1, float("nan"), float("inf")]:
        with pytest.raises(ValueError):
            D.conditioning_sigma(bad)
