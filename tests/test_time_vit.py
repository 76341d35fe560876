"""Tests for the rRCM encoder, projector and classifier (`rrcm.models.time_vit`, arch "rrcm_vit")."""

from __future__ import annotations

import json
import math
from pathlib import Path

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

def hand_count_encoder(*, in_channels, image_size, patch_size, width, depth, mlp_ratio=4.0, time_embed_dim=256,
                       time_token="sinusoid", qkv_bias=False):
    w, hidden = width, int(width * mlp_ratio)
    patches = (image_size // patch_size) ** 2
    per_block = (2 * w) + (3 * w * w + 3 * w) + (w * w + w) + (2 * w) + (w * hidden + hidden) + (hidden * w + w)
    if hidden == 4 * w:
        assert per_block == 12 * w * w + 13 * w
    if not qkv_bias:
        per_block -= 3 * w
    embeddings = (in_channels * patch_size ** 2 * w + w) + w + (2 + patches) * w  # patch conv, cls, positions
    time_mlp = (time_embed_dim * w + w) + (w * w + w) if time_token == "mlp" else 0  # the sinusoid has none
    return embeddings + time_mlp + depth * per_block + 2 * w  # + final LayerNorm


def hand_count_projector(in_dim, hidden, out=256):
    return in_dim * hidden + 2 * hidden + hidden * hidden + 2 * hidden + hidden * out  # no biases; BN affine


# size: (kind, exact encoder count (the authors' time token, no qkv bias), the earlier model's, projector count)
PRESET_CASES = {
    "tiny": (DIGITS, 200_832, 222_208, 148_480),
    "mnist": ((1, 28), 203_712, 225_088, 148_480),
    "cifar-small": (CIFAR, 2_688_384, 2_778_240, 1_511_424),
    "cifar10-b": (CIFAR, 85_117_440, 85_933_056, 6_299_648),
    "imagenet-s": (IMAGENET, 19_401_728, 19_805_184, 5_775_360),
    "imagenet-b": (IMAGENET, 85_771_776, 86_587_392, 20_987_904),
}


@pytest.mark.parametrize("earlier", [False, True], ids=["authors", "earlier"])
@pytest.mark.parametrize("size", list(PRESET_CASES))
def test_preset_parameter_counts(size, earlier):
    kind, authors_encoder, earlier_encoder, expected_projector = PRESET_CASES[size]
    options = {"time_token": "mlp", "qkv_bias": True} if earlier else {}
    cfg = rrcm_config(kind, num_classes=1000, size=size, **options)
    with torch.device("meta"):  # no memory for ViT-B's weights
        encoder = encoder_from_config(cfg)
        projector = Projector(encoder.width, RRCM_VIT_SIZES[size]["projector_hidden"])
    n_enc, n_proj = count_parameters(encoder), count_parameters(projector)
    print(f"{size}: encoder {n_enc:,}, projector {n_proj:,}, encoder + projector {n_enc + n_proj:,}")
    assert n_enc == hand_count_encoder(**{k: cfg[k] for k in ("in_channels", "image_size", "patch_size", "width",
                                                                "depth", "mlp_ratio", "time_embed_dim",
                                                                "time_token", "qkv_bias")})
    assert n_proj == hand_count_projector(encoder.width, RRCM_VIT_SIZES[size]["projector_hidden"])
    assert (n_enc, n_proj) == (earlier_encoder if earlier else authors_encoder, expected_projector)


def test_imagenet_b_is_vit_b16_sized():
    # ViT-B/16: 86,567,656 with its 1000-class head, 85,798,656 without. Ours adds one position and has no
    # qkv bias (12 blocks x 3 x 768 = 27,648); the earlier model adds the time MLP (256*768 + 768 + 768*768
    # + 768 = 787,968) and keeps the qkv bias.
    authors, earlier = PRESET_CASES["imagenet-b"][1:3]
    assert 84_000_000 <= authors <= 88_000_000
    assert authors == 85_798_656 + 768 - 27_648
    assert earlier == 85_798_656 + 768 + 787_968
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
            manual = enc.norm(enc.encode(enc.embed(z * c, sigma))[:, 0])
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

    for time_token in ("sinusoid", "mlp"):
        enc = tiny_encoder(depth=3, time_token=time_token)
        ids = {name: layer_id(name, enc.depth) for name, _ in enc.named_parameters()}
        assert ids["patch_embed.weight"] == ids["pos_embed"] == ids["cls_token"] == 0
        assert ids["blocks.0.attn.qkv.weight"] == 1 and ids["blocks.2.mlp.2.bias"] == 3
        assert ids["norm.weight"] == 4 == enc.depth + 1
        assert ("time_embed.0.weight" in ids) == (time_token == "mlp")
        assert ids.get("time_embed.0.weight", 0) == 0


def test_init_like_the_project_vit():
    enc = tiny_encoder()
    # the authors' cls token: N(0, 1e-6²); the earlier model's: trunc-normal(0.02) like the rest
    assert 0.5e-6 < enc.cls_token.std().item() < 2e-6
    assert 0.01 < tiny_encoder(time_token="mlp").cls_token.std().item() < 0.03
    for name, p in enc.named_parameters():
        if name == "cls_token":
            continue
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
    cls_output = clf.encoder.cls_output
    clf.encoder.cls_output = lambda z, sigma: seen.update(z=z.clone(), sigma=sigma) or cls_output(z, sigma)
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
        # the head reads the cls token before the final LayerNorm (the authors' CIFAR-10 fine-tuning)
        torch.testing.assert_close(clf(x), clf.head(cls_output(2 * x - 1, 0.3)))
        torch.testing.assert_close(clf.features(x), cls_output(2 * x - 1, 0.3))
    assert clf.features(x).shape == (4, clf.feature_dim)
    assert not any(p.requires_grad for p in clf.encoder.norm.parameters())  # unused, so frozen
    normed = build_model(rrcm_config(condition_sigma=0.3, feature_norm=True)).eval()
    with torch.no_grad():
        torch.testing.assert_close(normed.features(x), normed.encoder.norm(normed.encoder.cls_output(2 * x - 1, 0.3)))
    assert all(p.requires_grad for p in normed.encoder.norm.parameters())


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
        torch.testing.assert_close(clf.features(x), encoder.eval().cls_output(2 * x - 1, 0.5))
    with pytest.raises(ValueError, match="rrcm_vit"):
        encoder_from_config(model_config("vit", num_classes=10, in_channels=1, image_size=8, mean=[0.5], std=[0.5]))


def test_registry_round_trip():
    cfg = rrcm_config(CIFAR, size="cifar-small", depth=2, condition_sigma=0.25)
    assert set(cfg) == {"arch", "num_classes", "in_channels", "image_size", "mean", "std", "patch_size", "width",
                        "depth", "heads", "mlp_ratio", "time_embed_dim", "condition_sigma", "sigma_data",
                        "time_token", "qkv_bias", "feature_norm"}
    assert cfg["sigma_data"] == 0.5 and cfg["time_embed_dim"] == 256
    assert (cfg["time_token"], cfg["qkv_bias"], cfg["feature_norm"]) == ("sinusoid", False, False)
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


# ---- the authors' encoder (jiachenlei/rRCM) against rrcm's earlier one

def test_the_authors_time_token_is_the_full_width_sinusoid_of_c_noise():
    enc = tiny_encoder()
    assert enc.time_embed is None
    sigmas = torch.tensor([0.002, 0.25, 1.0, 80.0])
    token = enc.time_token(sigmas, 4, "cpu")
    c_noise = 250 * torch.log(sigmas.double())
    k = torch.arange(16, dtype=torch.float64)
    args = c_noise[:, None] * torch.exp(-math.log(10_000.0) * k / 16)[None]
    expected = torch.cat([torch.cos(args), torch.sin(args)], dim=1)  # width 32 = 16 cos + 16 sin
    torch.testing.assert_close(token.double(), expected, rtol=0, atol=1e-3)  # float32 args reach ~1500
    # every (cos, sin) pair has unit norm, so the token's RMS is exactly 1/sqrt(2) at any sigma
    torch.testing.assert_close(token.pow(2).mean(1), torch.full((4,), 0.5), rtol=0, atol=1e-6)
    # the earlier MLP token carries far less signal at initialisation (the issue's ~20x)
    earlier = tiny_encoder(time_token="mlp").time_token(sigmas, 4, "cpu")
    assert earlier.pow(2).mean().sqrt() < 0.1


def test_the_time_token_reaches_the_features():
    enc = tiny_encoder()
    z = noisy()
    with torch.no_grad():
        assert not torch.allclose(enc(z, 0.5), enc(z, 0.6), atol=1e-4)


def test_qkv_has_no_bias_unless_asked_for():
    assert all(block.attn.qkv.bias is None for block in tiny_encoder().blocks)
    assert all(block.attn.qkv.bias is not None for block in tiny_encoder(qkv_bias=True).blocks)
    assert all(block.attn.proj.bias is not None for block in tiny_encoder().blocks)  # as the authors'


def test_bad_encoder_options_name_the_key():
    with pytest.raises(ValueError, match="'time_token' must be one of sinusoid, mlp"):
        rrcm_config(time_token="linear")
    with pytest.raises(TypeError, match="'qkv_bias' must be true or false"):
        rrcm_config(qkv_bias=1)
    with pytest.raises(TypeError, match="'feature_norm' must be true or false"):
        rrcm_config(feature_norm="yes")


def test_a_config_saved_before_the_new_keys_builds_the_earlier_model(tmp_path):
    from rrcm.checkpoint import load_checkpoint, read_checkpoint_config, save_checkpoint
    from rrcm.models import upgrade_saved_config

    earlier = rrcm_config(time_token="mlp", qkv_bias=True, feature_norm=True)
    torch.manual_seed(3)
    model = build_model(earlier).eval()
    old_config = {k: v for k, v in earlier.items() if k not in ("time_token", "qkv_bias", "feature_norm")}
    save_checkpoint(tmp_path / "old.safetensors", model, {"model": old_config})
    assert read_checkpoint_config(tmp_path / "old.safetensors")["model"] == earlier
    loaded, _ = load_checkpoint(tmp_path / "old.safetensors")
    x = pixels()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    # a config in memory takes today's defaults; explicit keys win over the legacy values; nested model
    # configs (a composite's parts) are upgraded too; other arches are left alone
    assert build_model(old_config).encoder.time_embed is None
    assert upgrade_saved_config({**old_config, "qkv_bias": False})["qkv_bias"] is False
    nested = upgrade_saved_config({"arch": "dds", "classifier": old_config})
    assert nested["classifier"] == {**old_config, "time_token": "mlp", "qkv_bias": True, "feature_norm": True}
    lenet = {"arch": "lenet", "num_classes": 10}
    assert upgrade_saved_config(lenet) == lenet


def test_the_committed_sequential_checkpoints_still_build_as_trained():
    from safetensors import safe_open

    from rrcm.checkpoint import CONFIG_KEY, load_checkpoint

    path = Path(__file__).resolve().parent.parent / "results/mnist/sequential/checkpoints/rrcm-s0.5.safetensors"
    with safe_open(str(path), framework="pt") as f:
        raw = json.loads(f.metadata()[CONFIG_KEY])["model"]
    assert "time_token" not in raw  # written before the key existed
    model, config = load_checkpoint(path)
    assert model.encoder.time_embed is not None and model.feature_norm
    assert model.encoder.blocks[0].attn.qkv.bias is not None
