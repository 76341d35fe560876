"""Tests for the model registry (`rrcm.models`)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from rrcm.models import ARCHS, build_model, count_parameters, model_config

DIGITS = (1, 8)    # (in_channels, image_size)
MNIST = (1, 28)
CIFAR = (3, 32)

# Every arch on every input kind it supports (all of them run on all three).
CASES = [(arch, kind) for arch in ARCHS for kind in (DIGITS, MNIST, CIFAR)]


def make_config(arch: str, kind=CIFAR, num_classes: int = 10, **overrides) -> dict:
    channels, size = kind
    return model_config(arch, num_classes=num_classes, in_channels=channels, image_size=size,
                        mean=[0.4 + 0.05 * i for i in range(channels)],
                        std=[0.2 + 0.03 * i for i in range(channels)], **overrides)


def make_model(arch: str, kind=CIFAR, seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(make_config(arch, kind, **overrides)).eval()


def pixels(kind, batch: int = 4, seed: int = 1) -> torch.Tensor:
    channels, size = kind
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def test_registered_archs():
    assert set(ARCHS) == {"lenet", "lenet5", "cifar_resnet", "cifar_resnet20", "cifar_resnet110", "vit", "rrcm_vit"}


@pytest.mark.parametrize("arch,kind", CASES)
def test_forward_returns_logits(arch, kind):
    model = build_model(make_config(arch, kind, num_classes=7)).eval()
    with torch.no_grad():
        logits = model(pixels(kind, batch=3))
    assert logits.shape == (3, 7)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_parameter_counts():
    counts = {
        "lenet": count_parameters(make_model("lenet", MNIST)),
        "lenet5": count_parameters(make_model("lenet5", MNIST)),
        "cifar_resnet20": count_parameters(make_model("cifar_resnet20", CIFAR)),
        "cifar_resnet110": count_parameters(make_model("cifar_resnet110", CIFAR)),
        "vit_digits": count_parameters(make_model("vit", DIGITS)),
    }
    print(counts)
    # Jeong & Shin's MNIST LeNet: conv 520 + 25,050, fc 800->500 400,500, 500->10 5,010.
    assert counts["lenet"] == 431_080
    # LeNet-5 widths: conv 156 + 2,416, fc 30,840 + 10,164 + 850.
    assert counts["lenet5"] == 156 + 2416 + 30840 + 10164 + 850 == 44_426
    # Cohen et al.'s CIFAR ResNets (basic blocks, 1x1-conv projection shortcuts).
    assert counts["cifar_resnet20"] == 272_474
    assert 1_700_000 <= counts["cifar_resnet110"] <= 1_750_000
    assert counts["cifar_resnet110"] == 1_730_714
    assert 100_000 <= counts["vit_digits"] <= 300_000
    assert counts["vit_digits"] == 202_186


def test_generic_resnet_matches_named_ones():
    named = make_model("cifar_resnet110", CIFAR, seed=3)
    generic = make_model("cifar_resnet", CIFAR, seed=3, depth=110)
    assert make_config("cifar_resnet", depth=110)["block"] == "basic"
    for (ka, a), (kb, b) in zip(named.state_dict().items(), generic.state_dict().items()):
        assert ka == kb and torch.equal(a, b)
    bottleneck = make_model("cifar_resnet", CIFAR, depth=29, block="bottleneck")
    assert bottleneck(pixels(CIFAR)).shape == (4, 10)


def test_count_parameters_trainable_only():
    model = make_model("lenet5", DIGITS)
    total = count_parameters(model)
    for p in model.classifier.parameters():
        p.requires_grad_(False)
    frozen = sum(p.numel() for p in model.classifier.parameters())
    assert count_parameters(model, trainable_only=True) == total - frozen
    assert count_parameters(model) == total


@pytest.mark.parametrize("arch,kind", [(a, CIFAR) for a in ARCHS] + [("lenet", DIGITS), ("vit", DIGITS)])
def test_normalisation_is_inside(arch, kind):
    model = make_model(arch, kind)
    cfg = make_config(arch, kind)
    mean = torch.tensor(cfg["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, -1, 1, 1)
    core = copy.deepcopy(model)
    core.normalize = nn.Identity()
    x = pixels(kind)
    with torch.no_grad():
        torch.testing.assert_close(model(x), core((x - mean) / std), rtol=1e-5, atol=1e-5)
    # the config, not the state dict, is the source of truth for the normalisation
    assert not any(k.startswith("normalize.") for k in model.state_dict())
    # a 1-channel mean must not silently broadcast over 3-channel input (or vice versa)
    wrong_channels = 3 if kind[0] == 1 else 1
    with pytest.raises(ValueError, match="expected input of shape"):
        model(torch.rand(2, wrong_channels, kind[1], kind[1]))


@pytest.mark.parametrize("arch", ARCHS)
def test_config_round_trip(arch):
    cfg = make_config(arch, DIGITS)
    rebuilt_cfg = json.loads(json.dumps(cfg))
    assert rebuilt_cfg == cfg
    # complete: resolving it again changes nothing, and every key is a known one
    assert model_config(**rebuilt_cfg) == cfg
    torch.manual_seed(5)
    first = build_model(cfg)
    torch.manual_seed(5)
    second = build_model(rebuilt_cfg)
    a, b = first.state_dict(), second.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert a[key].shape == b[key].shape and torch.equal(a[key], b[key]), key
    # a model built from a fresh seed loads the other's weights strictly and then agrees
    torch.manual_seed(6)
    third = build_model(rebuilt_cfg)
    third.load_state_dict(a, strict=True)
    first.eval()
    third.eval()
    x = pixels(DIGITS)
    with torch.no_grad():
        assert torch.equal(first(x), third(x))


def test_build_model_fills_defaults():
    full = make_config("vit", DIGITS)
    partial = {k: full[k] for k in ("arch", "num_classes", "in_channels", "image_size", "mean", "std")}
    torch.manual_seed(0)
    a = build_model(partial)
    torch.manual_seed(0)
    b = build_model(full)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert full["patch_size"] == 2 and full["mlp_ratio"] == 4.0
    assert make_config("lenet", MNIST)["padding"] == 0  # the original, unpadded net on 28x28
    assert make_config("lenet", DIGITS)["padding"] == 2


def test_overrides_change_the_model():
    cfg = make_config("vit", CIFAR, patch_size=8, width=48, depth=2, heads=3, mlp_ratio=2)
    assert cfg["mlp_ratio"] == 2.0 and isinstance(cfg["mlp_ratio"], float)
    model = build_model(cfg)
    assert model.num_patches == 16 and model.feature_dim == 48 and len(model.blocks) == 2


@pytest.mark.parametrize("arch,overrides,error,pattern", [
    ("resnet9000", {}, ValueError, "valid archs: lenet, lenet5, cifar_resnet"),
    ("vit", {"patch_size": 3}, ValueError, "patch_size"),
    ("vit", {"width": 30, "heads": 4}, ValueError, "heads"),
    ("vit", {"depth": 0}, ValueError, "depth"),
    ("vit", {"mlp_ratio": -1.0}, ValueError, "mlp_ratio"),
    ("vit", {"width": "64"}, TypeError, "width"),
    ("vit", {"patch": 2}, ValueError, "unknown model config key.*patch"),
    ("cifar_resnet20", {"depth": 56}, ValueError, "unknown model config key.*depth"),
    ("cifar_resnet", {"depth": 21}, ValueError, "depth"),
    ("cifar_resnet", {"depth": 32, "block": "bottleneck"}, ValueError, "depth"),
    ("cifar_resnet", {"block": "dense"}, ValueError, "block"),
    ("lenet", {"padding": -1}, ValueError, "padding"),
    ("lenet", {"num_classes": 0}, ValueError, "num_classes"),
    ("lenet", {"num_classes": 1}, ValueError, "num_classes"),
    ("lenet", {"num_classes": 2.5}, TypeError, "num_classes"),
    ("lenet", {"num_classes": True}, TypeError, "num_classes"),
    ("lenet", {"in_channels": 0}, ValueError, "in_channels"),
    ("lenet", {"mean": [0.5, 0.5]}, ValueError, "mean"),
    ("lenet", {"std": [0.0]}, ValueError, "std"),
    ("lenet", {"std": [float("nan")]}, ValueError, "std"),
    ("lenet", {"mean": "0.5"}, TypeError, "mean"),
])
def test_bad_configs_raise(arch, overrides, error, pattern):
    cfg = {"arch": arch, "num_classes": 10, "in_channels": 1, "image_size": 8, "mean": [0.5], "std": [0.5]}
    cfg.update(overrides)
    with pytest.raises(error, match=pattern):
        build_model(cfg)
    with pytest.raises(error, match=pattern):
        model_config(**cfg)


def test_bad_config_shapes_raise():
    with pytest.raises(TypeError):
        build_model(["vit"])
    with pytest.raises(ValueError, match="arch"):
        build_model({"num_classes": 10})
    with pytest.raises(ValueError, match="missing key.*std"):
        build_model({"arch": "vit", "num_classes": 10, "in_channels": 1, "image_size": 8, "mean": [0.5]})
    with pytest.raises(ValueError, match="padding"):  # the unpadded LeNet does not fit 8x8 images
        make_config("lenet", DIGITS, padding=0)


@pytest.mark.parametrize("arch,kind", [(a, CIFAR) for a in ARCHS] + [("lenet", MNIST), ("vit", DIGITS)])
def test_bf16_autocast_channels_last(arch, kind):
    model = make_model(arch, kind)
    x = pixels(kind, batch=32)
    with torch.no_grad():
        reference = model(x)
        model = model.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = model(x.contiguous(memory_format=torch.channels_last))
    assert fast.shape == reference.shape and torch.isfinite(fast.float()).all()
    agreement = (fast.argmax(1) == reference.argmax(1)).float().mean().item()
    assert agreement >= 0.9, agreement


@pytest.mark.parametrize("arch,kind", [(a, CIFAR) for a in ARCHS] + [("vit", DIGITS)])
def test_eval_mode_is_deterministic(arch, kind):
    model = make_model(arch, kind)
    x = pixels(kind, batch=8)
    with torch.no_grad():
        first, second = model(x), model(x)
        # eval mode uses no batch statistics: an example's logits do not depend on its batch-mates
        alone = model(x[:3])
    assert torch.equal(first, second)
    torch.testing.assert_close(alone, first[:3], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch,kind", [(a, CIFAR) for a in ARCHS if a != "cifar_resnet110"] + [("vit", DIGITS)])
def test_every_parameter_gets_a_gradient(arch, kind):
    # DDP needs every trainable parameter in the graph (no find_unused_parameters); the rRCM classifier's
    # unused final LayerNorm is frozen
    model = make_model(arch, kind).train()
    loss = nn.functional.cross_entropy(model(pixels(kind)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert frozen == (["encoder.norm.weight", "encoder.norm.bias"] if arch == "rrcm_vit" else [])


def test_vit_pieces_compose():
    model = make_model("vit", DIGITS)
    x = pixels(DIGITS)
    with torch.no_grad():
        tokens = model.embed(model.normalize(x))
        assert tokens.shape == (4, 1 + 16, 64)
        h = model.features(x)
        assert h.shape == (4, model.feature_dim)
        torch.testing.assert_close(h, model.encode(tokens)[:, 0])
        torch.testing.assert_close(model.head(h), model(x))
    with pytest.raises(ValueError, match="8x8"):
        model(torch.rand(2, 1, 16, 16))


def test_vit_init():
    model = make_model("vit", CIFAR)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        elif "norm" in name:
            assert torch.equal(p, torch.ones_like(p)), name
        else:  # normal with std 0.02, truncated at +-2 (the usual ViT convention)
            assert p.abs().max() <= 2.0 and 0.01 < p.std().item() < 0.03, name
