"""timm's RandAugment "rand-m9-mstd0.5-inc1" in plain torch (rrcm.data.randaugment)."""

import math

import pytest
import torch

from rrcm.data import randaugment as R
from rrcm.data.randaugment import RANDAUGMENT_OPS, rand_augment


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(batch: int = 8, channels: int = 3, height: int = 12, width: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, channels, height, width, generator=gen(seed))


def levels(*values: int) -> torch.Tensor:
    """A (1, 1, 1, n) image of uint8 levels, as ToTensor gives them."""
    return torch.tensor(values, dtype=torch.uint8).float().div(255).view(1, 1, 1, -1)


def as_levels(x: torch.Tensor) -> list[int]:
    return (x * 255).round().int().flatten().tolist()


def arg(value: float) -> torch.Tensor:
    return torch.tensor([value], dtype=torch.float64)


# ---------------------------------------------------------------------------------------------- the policy
def test_op_lists_are_timms():
    assert RANDAUGMENT_OPS == (
        "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
        "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
        "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
    )
    assert R._RAND_OPS_PLAIN == (
        "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
        "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
    )
    assert R._sample_plan(4, gen(), increasing=False).names == R._RAND_OPS_PLAIN


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_shape_dtype_range_and_determinism(channels, dtype):
    x = images(32, channels, 10, 14).to(dtype)
    before = x.clone()
    out = rand_augment(x, gen(5))
    assert out.shape == x.shape and out.dtype == dtype
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()
    assert torch.equal(x, before)  # the input is not modified
    assert torch.equal(out, rand_augment(x, gen(5)))
    assert not torch.equal(out, rand_augment(x, gen(6)))
    assert not torch.equal(out, x)


def test_all_randomness_comes_from_the_generator():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    rand_augment(images(), gen())
    assert torch.equal(torch.get_rng_state(), state)


def test_images_in_a_batch_get_their_own_ops():
    x = images(1).expand(64, -1, -1, -1)  # 64 copies of one image
    out = rand_augment(x, gen(2))
    distinct = {tuple(out[i].flatten().tolist()) for i in range(64)}
    assert len(distinct) > 20


@pytest.mark.parametrize("num_ops", [1, 2, 3])
def test_output_is_the_plan_applied_image_by_image(num_ops):
    x = images(48, 3, 9, 11, seed=4)
    out = rand_augment(x, gen(7), num_ops=num_ops)
    plan = R._sample_plan(48, gen(7), num_ops=num_ops)
    assert torch.equal(out, R._apply_plan(x, plan))
    for i in range(48):
        expected = x[i : i + 1]
        for layer in range(num_ops):
            if plan.applied[layer, i]:
                name = RANDAUGMENT_OPS[plan.op[layer, i]]
                expected = R._apply_op(name, expected, plan.level[layer, i], plan.sign[layer, i])
        torch.testing.assert_close(out[i : i + 1], expected, atol=1e-5, rtol=0)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        rand_augment(torch.rand(2, 2, 8, 8), gen())
    with pytest.raises(ValueError):
        rand_augment(torch.rand(3, 8, 8), gen())
    with pytest.raises(ValueError):
        rand_augment(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), gen())
    with pytest.raises(ValueError):
        rand_augment(torch.rand(2, 3, 8, 8), gen(), magnitude_std=-1)


# ------------------------------------------------------------------------------------------ random draws
def test_each_op_is_chosen_equally_often():
    plan = R._sample_plan(30_000, gen(11))
    counts = torch.bincount(plan.op.flatten(), minlength=15)
    # 60000 uniform draws over 15 ops: 4000 each, binomial sd 61; a 14-op or skewed choice is far outside.
    assert len(counts) == 15
    assert (counts - 4000).abs().max() < 300, counts.tolist()
    # the two layers draw independently: each pair of ops about 30000 / 225 = 133 times (sd 11.5)
    pairs = torch.bincount(plan.op[0] * 15 + plan.op[1], minlength=225)
    assert (pairs - 133.3).abs().max() < 65


def test_each_op_is_applied_with_probability_one_half_and_signs_are_fair():
    plan = R._sample_plan(30_000, gen(12))
    assert abs(plan.applied.sum().item() - 30_000) < 600  # 60000 draws, sd 122
    assert abs((plan.sign < 0).sum().item() - 30_000) < 600
    assert set(plan.sign.unique().tolist()) == {-1.0, 1.0}
    # the application does not depend on the op chosen
    for k in range(15):
        chosen = plan.op == k
        assert abs(plan.applied[chosen].float().mean().item() - 0.5) < 0.05


def test_magnitude_std_zero_uses_exactly_the_magnitude():
    assert (R._sample_plan(500, gen(), magnitude_std=0).level == 9.0).all()
    assert (R._sample_plan(500, gen(), magnitude=12, magnitude_std=0).level == 10.0).all()  # clipped
    assert (R._sample_plan(500, gen(), magnitude=12, magnitude_std=0, max_magnitude=15).level == 12.0).all()


def test_magnitude_draws_are_gaussian_and_clipped_not_redrawn():
    level = R._sample_plan(10_000, gen(3)).level.flatten()  # N(9, 0.5), 20000 draws
    assert level.min() >= 0 and level.max() == 10.0
    # P(N(9, 0.5) > 10) = 0.02275: about 455 draws clipped to exactly 10 (sd 21)
    assert 350 < (level == 10.0).sum().item() < 560
    assert abs(level.mean().item() - 9.0) < 0.03 and 0.45 < level.std().item() < 0.52
    wide = R._sample_plan(10_000, gen(3), magnitude_std=5).level.flatten()
    assert wide.min() == 0.0 and wide.max() == 10.0
    assert 0.03 < (wide == 0).float().mean() < 0.042  # P(N(9, 5) < 0) = 0.036
    high = R._sample_plan(10_000, gen(3), magnitude_std=5, max_magnitude=30).level.flatten()
    assert high.max() > 20 and high.max() <= 30
    uniform = R._sample_plan(10_000, gen(3), magnitude_std=math.inf).level.flatten()
    assert uniform.min() >= 0 and uniform.max() <= 9 and abs(uniform.mean().item() - 4.5) < 0.1


# ----------------------------------------------------------------------------------- magnitude to argument
@pytest.mark.parametrize(
    "name, level, sign, expected",
    [
        ("Rotate", 10, 1, 30.0), ("Rotate", 9, -1, -27.0), ("Rotate", 0, -1, 0.0),
        ("PosterizeIncreasing", 0, 1, 4), ("PosterizeIncreasing", 2.4, 1, 4), ("PosterizeIncreasing", 2.5, 1, 3),
        ("PosterizeIncreasing", 9, 1, 1), ("PosterizeIncreasing", 10, -1, 0),
        ("SolarizeIncreasing", 0, 1, 256), ("SolarizeIncreasing", 5, 1, 128), ("SolarizeIncreasing", 9, -1, 26),
        ("SolarizeIncreasing", 10, 1, 0),
        ("SolarizeAdd", 0, 1, 0), ("SolarizeAdd", 9, -1, 99), ("SolarizeAdd", 10, 1, 110),
        ("ColorIncreasing", 9, 1, 1.81), ("ContrastIncreasing", 9, -1, 0.19), ("BrightnessIncreasing", 0, -1, 1.0),
        ("SharpnessIncreasing", 10, -1, 0.1), ("SharpnessIncreasing", 10, 1, 1.9),
        ("ColorIncreasing", 12, -1, 0.1),  # timm keeps the factor >= 0.1 (reachable when max_magnitude > 10)
        ("ShearX", 10, -1, -0.3), ("ShearY", 5, 1, 0.15),
        ("TranslateXRel", 10, 1, 0.45), ("TranslateYRel", 9, -1, -0.405),
        # increasing=False variants
        ("Posterize", 9, 1, 3), ("Solarize", 9, -1, 230), ("Color", 9, -1, 1.72), ("Sharpness", 0, 1, 0.1),
    ],
)
def test_level_to_argument(name, level, sign, expected):
    value = R._OPS[name].arg(arg(level), arg(sign)).item()
    assert value == pytest.approx(expected, abs=1e-12)


def test_ops_without_an_argument():
    assert {name for name, op in R._OPS.items() if op.arg is None} == {"AutoContrast", "Equalize", "Invert"}


@pytest.mark.parametrize(
    "name",
    ["Rotate", "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
     "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"],
)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_magnitude_zero_is_the_identity(name, sign):
    x = images(4, 3, 9, 13)
    torch.testing.assert_close(R._apply_op(name, x, 0.0, sign), x, atol=2e-6, rtol=0)


# --------------------------------------------------------------------------------------------- pixel ops
def test_invert():
    x = images(2)
    assert torch.equal(R._apply_op("Invert", x, 9.0), 1 - x)


def test_posterize_keeps_the_top_bits():
    x = levels(0, 15, 16, 100, 200, 255)
    assert as_levels(R._OPS["PosterizeIncreasing"].apply(x, arg(4))) == [0, 0, 16, 96, 192, 240]
    assert as_levels(R._apply_op("PosterizeIncreasing", x, 0.0)) == [0, 0, 16, 96, 192, 240]  # level 0: 4 bits
    assert as_levels(R._apply_op("PosterizeIncreasing", x, 9.0)) == [0, 0, 0, 0, 128, 128]  # 1 bit
    assert as_levels(R._apply_op("PosterizeIncreasing", x, 10.0)) == [0] * 6  # 0 bits: black
    off_grid = torch.rand(1, 3, 4, 4, generator=gen())
    assert torch.equal(R._OPS["Posterize"].apply(off_grid, arg(8)), off_grid)  # timm: 8 bits is the identity


def test_solarize_inverts_at_and_above_the_threshold():
    x = levels(0, 127, 128, 255)
    assert as_levels(R._OPS["SolarizeIncreasing"].apply(x, arg(128))) == [0, 127, 127, 0]
    assert as_levels(R._apply_op("SolarizeIncreasing", x, 5.0)) == [0, 127, 127, 0]  # threshold 128
    assert as_levels(R._apply_op("SolarizeIncreasing", x, 9.0)) == [0, 128, 127, 0]  # threshold 26
    assert as_levels(R._apply_op("SolarizeIncreasing", x, 10.0)) == [255, 128, 127, 0]  # threshold 0
    every = levels(*range(256))
    assert torch.equal(R._OPS["Solarize"].apply(every, arg(256)), every)
    assert as_levels(R._OPS["Solarize"].apply(every, arg(200))) == list(range(200)) + [255 - i for i in range(200, 256)]


def test_solarize_add_brightens_the_pixels_below_128():
    x = levels(0, 100, 127, 128, 200)
    assert as_levels(R._apply_op("SolarizeAdd", x, 9.0)) == [99, 199, 226, 128, 200]  # add 99
    assert as_levels(R._apply_op("SolarizeAdd", x, 10.0)) == [110, 210, 237, 128, 200]  # add 110
    assert as_levels(R._OPS["SolarizeAdd"].apply(x, arg(220))) == [220, 255, 255, 128, 200]  # saturates


def test_auto_contrast_stretches_each_channel():
    x = torch.empty(1, 3, 1, 3)
    x[0, 0, 0] = torch.tensor([0.2, 0.4, 0.6])
    x[0, 1, 0] = 0.3  # constant: left alone
    x[0, 2, 0] = torch.tensor([0.2, 0.2 + 0.4 / 255, 0.2])  # spans less than one uint8 level: left alone
    out = R._apply_op("AutoContrast", x, 9.0)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.0, 0.5, 1.0]))
    assert torch.equal(out[0, 1:], x[0, 1:])


def test_equalize_on_a_known_histogram():
    # 1024 pixels: 300 at level 10, 300 at 20, 424 at 30. PIL: step = (1024 - 424) // 255 = 2, and the
    # table gives level 10 -> 1 // 2 = 0, level 20 -> 301 // 2 = 150, level 30 -> 601 // 2 = 300, clipped to 255.
    values = torch.tensor([10] * 300 + [20] * 300 + [30] * 424)
    channel = values[torch.randperm(1024, generator=gen())].view(32, 32)
    x = torch.stack([channel, torch.full((32, 32), 77), channel.flip(0)]).to(torch.uint8).float().div(255)[None]
    out = R._apply_op("Equalize", x, 9.0)
    mapping = {10: 0, 20: 150, 30: 255}
    assert as_levels(out[0, 0]) == [mapping[v] for v in channel.flatten().tolist()]
    assert torch.equal(out[0, 1], x[0, 1])  # one level only: PIL's identity table
    assert torch.equal(out[0, 2], out[0, 0].flip(0))  # each channel on its own histogram
    small = levels(0, 0, 128, 255)  # step (4 - 1) // 255 = 0: identity
    assert torch.equal(R._apply_op("Equalize", small, 9.0), small)


def test_brightness_scales_and_clips():
    x = images(2)
    torch.testing.assert_close(R._apply_op("BrightnessIncreasing", x, 5.0, 1.0), (1.45 * x).clamp(0, 1))
    torch.testing.assert_close(R._apply_op("BrightnessIncreasing", x, 5.0, -1.0), 0.55 * x)
    torch.testing.assert_close(R._apply_op("Brightness", x, 5.0), x)  # increasing=False: factor 1.0 at 5


def test_contrast_blends_with_the_mean_grey():
    grey = torch.tensor([0.0, 0.2, 0.4, 1.0]).view(1, 1, 2, 2)  # mean 0.4
    half = R._OPS["ContrastIncreasing"].apply(grey, arg(0.5))
    torch.testing.assert_close(half.flatten(), torch.tensor([0.2, 0.3, 0.4, 0.7]))
    most = R._apply_op("ContrastIncreasing", grey, 10.0, 1.0)  # factor 1.9, clipped
    torch.testing.assert_close(most.flatten(), torch.tensor([0.0, 0.02, 0.4, 1.0]))
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0  # luma 0.299 everywhere
    expected = 0.299 + 0.1 * (red - 0.299)
    torch.testing.assert_close(R._apply_op("ContrastIncreasing", red, 10.0, -1.0), expected)  # factor 0.1


def test_color_blends_with_the_luma():
    pixel = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)  # pure red, luma 0.299
    torch.testing.assert_close(R._OPS["ColorIncreasing"].apply(pixel, arg(0.0)).flatten(), torch.tensor([0.299] * 3))
    half = R._OPS["ColorIncreasing"].apply(pixel, arg(0.5))
    torch.testing.assert_close(half.flatten(), torch.tensor([0.6495, 0.1495, 0.1495]))
    green = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(R._OPS["ColorIncreasing"].apply(green, arg(0.0)).flatten(), torch.tensor([0.587] * 3))


@pytest.mark.parametrize("level, sign", [(9.0, 1.0), (9.0, -1.0), (10.0, -1.0)])
def test_color_of_a_grey_image_is_the_identity(level, sign):
    grey = images(3, 1)
    assert torch.equal(R._apply_op("ColorIncreasing", grey, level, sign), grey)
    grey_rgb = grey.expand(-1, 3, -1, -1)
    torch.testing.assert_close(R._apply_op("ColorIncreasing", grey_rgb, level, sign), grey_rgb, atol=1e-6, rtol=0)


def test_sharpness_uses_pils_smooth_kernel_and_keeps_the_border():
    dot = torch.zeros(1, 1, 3, 3)
    dot[0, 0, 1, 1] = 1.0
    smooth = R._OPS["SharpnessIncreasing"].apply(dot, arg(0.0))  # factor 0: the SMOOTH-filtered image
    expected = torch.zeros(1, 1, 3, 3)
    expected[0, 0, 1, 1] = 5 / 13
    torch.testing.assert_close(smooth, expected)
    x = images(2, 3, 5, 6)
    f = 1.7
    out = R._OPS["SharpnessIncreasing"].apply(x, torch.tensor([f, f], dtype=torch.float64))
    inner = out[..., 1:-1, 1:-1]
    neighbours = sum(x[..., 1 + i : 4 + i, 1 + j : 5 + j] for i in (-1, 0, 1) for j in (-1, 0, 1))
    blurred = (neighbours + 4 * x[..., 1:-1, 1:-1]) / 13
    torch.testing.assert_close(inner, blurred + f * (x[..., 1:-1, 1:-1] - blurred))
    border = torch.ones(5, 6, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    assert torch.equal(out[..., border], x[..., border])


# ------------------------------------------------------------------------------------------ geometric ops
def test_rotate_90_is_rot90_counter_clockwise():
    x = images(2, 3, 6, 6)
    for degrees, k in [(90.0, 1), (-90.0, -1), (180.0, 2)]:
        out = R._OPS["Rotate"].apply(x, torch.tensor([degrees, degrees]))
        torch.testing.assert_close(out, torch.rot90(x, k, (-2, -1)), atol=1e-5, rtol=0)


def test_rotate_turns_about_the_centre_and_fills_with_one_half():
    x = images(1, 3, 5, 5)
    out = R._apply_op("Rotate", x, 10.0, 1.0)  # 30 degrees
    torch.testing.assert_close(out[..., 2, 2], x[..., 2, 2], atol=1e-6, rtol=0)
    corners = R._OPS["Rotate"].apply(x, arg(45.0))[..., [0, 0, -1, -1], [0, -1, 0, -1]]
    assert torch.equal(corners, torch.full_like(corners, 0.5))


def test_translate_by_whole_pixels_shifts_and_fills():
    x = images(1, 3, 4, 8)
    left = R._OPS["TranslateXRel"].apply(x, arg(0.25))  # 0.25 of the width: 2 pixels, content moves left
    torch.testing.assert_close(left[..., :6], x[..., 2:], atol=1e-6, rtol=0)
    assert torch.equal(left[..., 6:], torch.full_like(left[..., 6:], 0.5))
    right = R._OPS["TranslateXRel"].apply(x, arg(-0.25))
    torch.testing.assert_close(right[..., 2:], x[..., :6], atol=1e-6, rtol=0)
    assert torch.equal(right[..., :2], torch.full_like(right[..., :2], 0.5))
    up = R._OPS["TranslateYRel"].apply(x, arg(0.25))  # 0.25 of the height: 1 row
    torch.testing.assert_close(up[..., :3, :], x[..., 1:, :], atol=1e-6, rtol=0)
    assert torch.equal(up[..., 3, :], torch.full_like(up[..., 3, :], 0.5))


def test_translate_by_half_a_pixel_interpolates_bilinearly():
    x = images(1, 1, 3, 8)
    out = R._OPS["TranslateXRel"].apply(x, arg(0.5 / 8))
    torch.testing.assert_close(out[..., :7], (x[..., :7] + x[..., 1:]) / 2, atol=1e-6, rtol=0)
    assert torch.equal(out[..., 7], torch.full_like(out[..., 7], 0.5))  # source point x = 8.0: outside


def test_shear_x_shifts_each_row_by_factor_times_its_distance_from_the_top():
    x = images(1, 3, 2, 6)
    out = R._OPS["ShearX"].apply(x, arg(2.0))  # row centres at y = 0.5 and 1.5: shifts of 1 and 3 pixels
    torch.testing.assert_close(out[..., 0, :5], x[..., 0, 1:], atol=1e-6, rtol=0)
    torch.testing.assert_close(out[..., 1, :3], x[..., 1, 3:], atol=1e-6, rtol=0)
    assert (out[..., 0, 5:] == 0.5).all() and (out[..., 1, 3:] == 0.5).all()
    column = R._OPS["ShearY"].apply(x.transpose(-1, -2), arg(2.0))
    torch.testing.assert_close(column, out.transpose(-1, -2), atol=1e-6, rtol=0)
