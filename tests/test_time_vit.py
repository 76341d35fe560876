"""Tests for the rRCM encoder, projector and classifier (`rrcm.models.time_vit`, arch "rrcm_vit")."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from rrcm.models import build_model, count_parameters, model_config
from rrcm.models import time_vit
from rrcm.models.time_vit import (RRCM_VIT_SIZES, Projector, RRCMClassifier, TimeConditionedViT,
                                  encoder_from_config, sinusoidal_embedding)

DIGITS = (1, 8)    # (in_channels, image_size)
CIFAR = (3, 32)
IMAGENET = (3, 224)


def rrcm_config(kind=DIGITS, num_classes: int = 10, **overrides) -> dict:
    channels, size = kind
    return model_config("rrcm_vit", num_classes=num_classes, in_channels=channels, image_size=size,
                        mean=[0.45] * channels, std=[0.25] * channels, **overrides)


def tiny_encoder(seed: int = 0, **overrides) -> TimeConditionedViT:
    torch.manual_seed(seed)
    kwargs = dict(image_size=8, patch_size=2, in_channels=1, width=32, depth=2, heads=4)
    kwargs.update(overrides)
    return TimeConditionedViT(**kwargs).eval()


def noisy(batch: int = 4, channels: int = 1, size: int = 8, seed: int = 1) -> torch.Tensor:
    """Images in [-1, 1] plus noise, as the encoder sees them during pre-training."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, channels, size, size, generator=g) * 2 - 1
    return x + 0.7 * torch.randn(x.shape, generator=g)


def pixels(batch: int = 4, channels: int = 1, size: int = 8, seed: int = 2) -> torch.Tensor:
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


# ---- parameter counts: an independent hand count, then the exact numbers

def hand_count_encoder(*, in_channels, image_size, patch_size, width, depth, mlp_ratio=4.0, time_embed_dim=256):
    w, hidden = width, int(width * mlp_ratio)
    patches = (image_size // patch_size) ** 2
    per_block = (2 * w) + (3 * w * w + 3 * w) + (w * w + w) + (2 * w) + (w * hidden + hidden) + (hidden * w + w)
    if hidden == 4 * w:
        assert per_block == 12 * w * w + 13 * w
    embeddings = (in_channels * patch_size ** 2 * w + w) + w + (2 + patches) * w  # patch conv, cls, positions
    time_mlp = (time_embed_dim * w + w) + (w * w + w)
    return embeddings + time_mlp + depth * per_block + 2 * w  # + final LayerNorm


def hand_count_projector(in_dim, hidden, out=256):
    return in_dim * hidden + 2 * hidden + hidden * hidden + 2 * hidden + hidden * out  # no biases; BN affine


PRESET_CASES = {  # size: (kind, exact encoder count, exact projector count)
    "tiny": (DIGITS, 222_208, 148_480),
    "mnist": ((1, 28), 225_088, 148_480),
    "cifar-small": (CIFAR, 2_778_240, 1_511_424),
    "cifar10-b": (CIFAR, 85_933_056, 6_299_648),
    "imagenet-s": (IMAGENET, 19_805_184, 5_775_360),
    "imagenet-b": (IMAGENET, 86_587_392, 20_987_904),
}


@pytest.mark.parametrize("size", list(PRESET_CASES))
def test_preset_parameter_counts(size):
    kind, expected_encoder, expected_projector = PRESET_CASES[size]
    cfg = rrcm_config(kind, num_classes=1000, size=size)
    with torch.device("meta"):  # no memory for ViT-B's weights
        encoder = encoder_from_config(cfg)
        projector = Projector(encoder.width, RRCM_VIT_SIZES[size]["projector_hidden"])
    n_enc, n_proj = count_parameters(encoder), count_parameters(projector)
    print(f"{size}: encoder {n_enc:,}, projector {n_proj:,}, encoder + projector {n_enc + n_proj:,}")
    assert n_enc == hand_count_encoder(**{k: cfg[k] for k in ("in_channels", "image_size", "patch_size", "width",
                                                                "depth", "mlp_ratio", "time_embed_dim")})
    assert n_proj == hand_count_projector(encoder.width, RRCM_VIT_SIZES[size]["projector_hidden"])
    assert (n_enc, n_proj) == (expected_encoder, expected_projector)


def test_imagenet_b_is_vit_b16_sized():
    # ViT-B/16: 86,567,656 with its 1000-class head, 85,798,656 without. Ours adds one position and
    # the time MLP (256*768 + 768 + 768*768 + 768 = 787,968) and has no head.
    n = PRESET_CASES["imagenet-b"][1]
    assert 84_000_000 <= n <= 88_000_000
    assert n == 85_798_656 + 768 + 787_968
    cfg = rrcm_config(IMAGENET, num_classes=1000, size="imagenet-b")
    assert (cfg["width"], cfg["depth"], cfg["heads"], cfg["patch_size"]) == (768, 12, 12, 16)


def test_size_presets_match_the_paper():
    assert rrcm_config(CIFAR, size="cifar10-b")["width"] == 768
    s = rrcm_config(IMAGENET, size="imagenet-s")
    assert (s["width"], s["depth"], s["heads"], s["patch_size"]) == (512, 6, 8, 16)
    small = rrcm_config(CIFAR, size="cifar-small")
    assert (small["width"], small["depth"], small["heads"], small["patch_size"]) == (192, 6, 3, 4)
    # tiny (= the defaults) picks its patch by image size
    assert rrcm_config(DIGITS, size="tiny")["patch_size"] == 2
    assert rrcm_config((1, 28), size="tiny")["patch_size"] == 4
    assert rrcm_config(DIGITS) == rrcm_config(DIGITS, size="tiny")


def test_size_fills_only_missing_keys_and_is_not_stored():
    cfg = rrcm_config(CIFAR, size="cifar-small", depth=2)
    assert cfg["depth"] == 2 and cfg["width"] == 192
    assert "size" not in cfg
    assert model_config(**json.loads(json.dumps(cfg))) == cfg
    with pytest.raises(ValueError, match="size.*cifar-small"):
        rrcm_config(CIFAR, size="huge")
    with pytest.raises(TypeError, match="size"):
        rrcm_config(CIFAR, size=3)
    # other archs do not know the key
    with pytest.raises(ValueError, match="unknown model config key.*size"):
        model_config("vit", num_classes=10, in_channels=1, image_size=8, mean=[0.5], std=[0.5], size="tiny")


# ---- the encoder

def test_preconditioning_formulas():
    s = torch.tensor([0.002, 0.5, 1.0, 80.0])
    torch.testing.assert_close(time_vit._c_in(s), 1 / torch.sqrt(s ** 2 + 0.25))
    torch.testing.assert_close(time_vit._c_noise(s), 250 * torch.log(s))
    emb = sinusoidal_embedding(torch.tensor([0.0, -173.28]), 8)
    assert emb.shape == (2, 8) and emb.dtype == torch.float32
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))  # cos half, then sin half
    freqs = torch.tensor([10_000 ** (-k / 4) for k in range(4)])
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(-173.28 * freqs), torch.sin(-173.28 * freqs)]))
    assert sinusoidal_embedding(torch.zeros(3), 7).shape == (3, 7)


def test_features_shape_and_tokens():
    enc = tiny_encoder()
    z = noisy()
    with torch.no_grad():
        h = enc(z, 0.5)
        tokens = enc.embed(z, 0.5)
    assert h.shape == (4, 32) and enc.feature_dim == 32
    assert tokens.shape == (4, 2 + 16, 32) == (4, enc.num_tokens, 32)
    # tokens are [cls, time, patches] + positions
    with torch.no_grad():
        torch.testing.assert_close(tokens[:, 0], (enc.cls_token + enc.pos_embed[:, :1])[0].expand(4, -1))
        torch.testing.assert_close(tokens[:, 1], enc.time_token(0.5, 4, "cpu") + enc.pos_embed[0, 1])
    with pytest.raises(ValueError, match="8, 8"):
        enc(torch.zeros(2, 1, 16, 16), 0.5)


def test_input_is_scaled_by_c_in(monkeypatch):
    enc = tiny_encoder()
    z = noisy()
    with torch.no_grad():
        for sigma in (0.002, 0.5, 3.0, 80.0):
            c = 1 / math.sqrt(sigma ** 2 + 0.25)
            h = enc(z, sigma)
            manual = enc.encode(enc.embed(z * c, sigma))[:, 0]
            torch.testing.assert_close(h, manual, rtol=1e-5, atol=1e-5)
            with monkeypatch.context() as m:  # scaling disabled: feed the scaled input instead
                m.setattr(time_vit, "_c_in", lambda s, sigma_data=0.5: torch.ones_like(s))
                torch.testing.assert_close(enc(z * c, sigma), h, rtol=1e-5, atol=1e-5)


def test_time_token_tells_the_noise_level():
    enc = tiny_encoder()
    z = noisy()
    with torch.no_grad():
        # same scaled input, only the time token differs
        scaled = enc.embed(z, 0.5)
        other = enc.embed(z, 0.25)
        assert torch.equal(scaled[:, 2:], other[:, 2:]) and torch.equal(scaled[:, 0], other[:, 0])
        assert not torch.allclose(scaled[:, 1], other[:, 1])
        h = {s: enc(z, s) for s in (0.002, 0.25, 0.5, 1.0, 80.0)}
    for a in h:
        for b in h:
            if a < b:
                assert (h[a] - h[b]).abs().max() > 1e-3, (a, b)


def test_per_example_sigma_equals_one_at_a_time():
    enc = tiny_encoder()
    z = noisy(batch=5)
    sigmas = torch.tensor([0.002, 0.1, 0.5, 2.0, 80.0])
    with torch.no_grad():
        batched = enc(z, sigmas)
        alone = torch.cat([enc(z[i:i + 1], float(s)) for i, s in enumerate(sigmas)])
        torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
        # a number, a 0-dim tensor, a 1-element tensor and a repeated vector are the same thing
        ref = enc(z, 0.5)
        for sigma in (torch.tensor(0.5), torch.tensor([0.5]), torch.full((5,), 0.5),
                      torch.tensor(0.5, dtype=torch.float64)):
            assert torch.equal(enc(z, sigma), ref)
        # eval mode: an example's feature does not depend on its batch-mates
        torch.testing.assert_close(enc(z[:2], sigmas[:2]), batched[:2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sigma,error", [
    (0.0, ValueError), (-0.5, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
    (True, TypeError), ("0.5", TypeError), (torch.tensor([0.5, -1.0, 0.5, 0.5]), ValueError),
    (torch.full((3,), 0.5), ValueError), (torch.full((4, 1), 0.5), ValueError),
])
def test_bad_sigma_raises(sigma, error):
    with pytest.raises(error, match="sigma"):
        tiny_encoder()(noisy(), sigma)


def test_every_encoder_parameter_gets_a_gradient():
    enc = tiny_encoder().train()
    enc(noisy(), torch.tensor([0.1, 0.5, 1.0, 5.0])).square().mean().backward()
    assert not [n for n, p in enc.named_parameters() if p.grad is None]


def test_layer_ids_cover_every_parameter():
    from rrcm.train.engine import layer_id

    enc = tiny_encoder(depth=3)
    ids = {name: layer_id(name, enc.depth) for name, _ in enc.named_parameters()}
    assert ids["patch_embed.weight"] == ids["time_embed.0.weight"] == ids["pos_embed"] == ids["cls_token"] == 0
    assert ids["blocks.0.attn.qkv.weight"] == 1 and ids["blocks.2.mlp.2.bias"] == 3
    assert ids["norm.weight"] == 4 == enc.depth + 1
    assert enc.no_weight_decay() <= set(ids)


def test_init_like_the_project_vit():
    enc = tiny_encoder()
    for name, p in enc.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        elif "norm" in name:
            assert torch.equal(p, torch.ones_like(p)), name
        else:
            assert p.abs().max() <= 2.0 and 0.01 < p.std().item() < 0.03, name


def test_bf16_autocast_and_half_weights():
    enc = tiny_encoder()
    z = noisy(batch=16)
    sigmas = torch.linspace(0.01, 10.0, 16)
    with torch.no_grad():
        ref = enc(z, sigmas)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = enc(z, sigmas)
        assert torch.isfinite(fast.float()).all()
        assert nn.functional.cosine_similarity(fast.float(), ref).min() > 0.98
        # the whole model in bf16 (no autocast) also runs: the float32 sinusoid is cast to the MLP's dtype
        half = enc.to(torch.bfloat16)(z.bfloat16(), sigmas)
        assert half.dtype == torch.bfloat16
        assert nn.functional.cosine_similarity(half.float(), ref).min() > 0.95
    clf = build_model(rrcm_config()).eval()
    x = pixels(batch=16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = clf(x)
    assert logits.shape == (16, 10) and torch.isfinite(logits.float()).all()


# ---- the projector

def test_projector():
    proj = Projector(32, 64)
    assert proj.out_dim == 256
    proj.train()
    out = proj(torch.randn(2, 32))
    assert out.shape == (2, 256)
    out.square().sum().backward()
    assert all(p.grad is not None for p in proj.parameters())
    assert [type(m) for m in proj] == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 2 + [nn.Linear]
    assert all(m.bias is None for m in proj if isinstance(m, nn.Linear))
    assert Projector(32, 64, out_dim=128).eval()(torch.randn(1, 32)).shape == (1, 128)
    with pytest.raises(ValueError):  # BatchNorm's batch statistics need two examples
        Projector(32, 64).train()(torch.randn(1, 32))
    # the training loop's DDP conversion finds the BatchNorms
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(Projector(32, 64))
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in converted.modules()) == 2
    # on top of the encoder
    enc = tiny_encoder().train()
    assert Projector(enc.width, 64)(enc(noisy(), 0.002)).shape == (4, 256)


# ---- the classifier

def test_classifier_maps_pixels_to_minus_one_one():
    clf = build_model(rrcm_config(condition_sigma=0.3)).eval()
    assert isinstance(clf, RRCMClassifier) and isinstance(clf.encoder, TimeConditionedViT)
    seen = {}
    clf.encoder.register_forward_pre_hook(lambda m, args: seen.update(z=args[0].clone(), sigma=args[1]))
    x = pixels()
    with torch.no_grad():
        logits = clf(x)
    assert logits.shape == (4, 10)
    assert torch.equal(seen["z"], 2 * x - 1) and seen["sigma"] == 0.3
    # smoothing noise σ_RS on pixels becomes 2·σ_RS in the encoder's space
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        clf(x + 0.25 * eps)
    torch.testing.assert_close(seen["z"] - (2 * x - 1), 2 * 0.25 * eps, rtol=0, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(clf(x), clf.head(clf.encoder(2 * x - 1, 0.3)))
        torch.testing.assert_close(clf.features(x), clf.encoder(2 * x - 1, 0.3))
    assert clf.features(x).shape == (4, clf.feature_dim)


def test_mean_std_are_fixed_to_one_half():
    # Whatever normalisation the data pipeline reports, the diffusion convention fixes it.
    cfg = rrcm_config(CIFAR)
    assert cfg["mean"] == [0.5] * 3 and cfg["std"] == [0.5] * 3
    clf = build_model({**cfg, "mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.243, 0.261]})
    assert clf.normalize.mean.flatten().tolist() == [0.5] * 3 and clf.normalize.std.flatten().tolist() == [0.5] * 3
    assert not any(k.startswith("normalize.") for k in clf.state_dict())


def test_pretrained_encoder_loads_into_the_classifier():
    cfg = rrcm_config(CIFAR, condition_sigma=0.5, width=48, depth=2, heads=4)
    torch.manual_seed(0)
    encoder = encoder_from_config(cfg)
    torch.manual_seed(1)
    clf = build_model(cfg).eval()
    keys = list(clf.state_dict())
    assert keys == [f"encoder.{k}" for k in encoder.state_dict()] + ["head.weight", "head.bias"]
    clf.encoder.load_state_dict(encoder.state_dict(), strict=True)
    # ... and through the full state dict, as a checkpoint would
    full = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    full.update({k: v for k, v in clf.state_dict().items() if k.startswith("head.")})
    clf.load_state_dict(full, strict=True)
    x = pixels(channels=3, size=32)
    with torch.no_grad():
        torch.testing.assert_close(clf.features(x), encoder.eval()(2 * x - 1, 0.5))
    with pytest.raises(ValueError, match="rrcm_vit"):
        encoder_from_config(model_config("vit", num_classes=10, in_channels=1, image_size=8, mean=[0.5], std=[0.5]))


def test_registry_round_trip():
    cfg = rrcm_config(CIFAR, size="cifar-small", depth=2, condition_sigma=0.25)
    assert set(cfg) == {"arch", "num_classes", "in_channels", "image_size", "mean", "std", "patch_size", "width",
                        "depth", "heads", "mlp_ratio", "time_embed_dim", "condition_sigma", "sigma_data"}
    assert cfg["sigma_data"] == 0.5 and cfg["time_embed_dim"] == 256
    rebuilt = json.loads(json.dumps(cfg))
    assert rebuilt == cfg and model_config(**rebuilt) == cfg
    torch.manual_seed(4)
    a = build_model(cfg)
    torch.manual_seed(4)
    b = build_model(rebuilt)
    assert a.condition_sigma == b.condition_sigma == 0.25
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    torch.manual_seed(9)
    c = build_model(rebuilt)
    c.load_state_dict(sa, strict=True)
    x = pixels(channels=3, size=32)
    with torch.no_grad():
        assert torch.equal(a.eval()(x), c.eval()(x))
    # condition_sigma is configuration, not state
    assert not any("sigma" in k for k in sa)


@pytest.mark.parametrize("overrides,error,pattern", [
    ({"condition_sigma": 0.0}, ValueError, "condition_sigma"),
    ({"condition_sigma": -1.0}, ValueError, "condition_sigma"),
    ({"condition_sigma": "0.5"}, TypeError, "condition_sigma"),
    ({"sigma_data": 0.0}, ValueError, "sigma_data"),
    ({"time_embed_dim": 1}, ValueError, "time_embed_dim"),
    ({"patch_size": 3}, ValueError, "patch_size"),
    ({"width": 30, "heads": 4}, ValueError, "heads"),
    ({"projector_hidden": 64}, ValueError, "unknown model config key.*projector_hidden"),
    ({"in_channels": 0}, ValueError, "in_channels"),
])
def test_bad_rrcm_configs_raise(overrides, error, pattern):
    cfg = {"arch": "rrcm_vit", "num_classes": 10, "in_channels": 1, "image_size": 8, "mean": [0.5], "std": [0.5]}
    cfg.update(overrides)
    with pytest.raises(error, match=pattern):
        build_model(cfg)
