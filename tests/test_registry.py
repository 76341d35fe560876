"""The model registry's registration API and who imports what (`rrcm.models.registry`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from torch import nn

from rrcm.models import arch_names, build_model, is_arch, model_config, register_arch, registry

COMMON = dict(num_classes=3, in_channels=1, image_size=4, mean=[0.5], std=[0.5])


def run_python(code: str) -> dict:
    """Run `code` in a fresh interpreter; it prints one JSON object, returned here."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


LOADED = ("json.dumps({m: m in sys.modules for m in ('rrcm.baselines', 'rrcm.baselines.dds', "
          "'rrcm.baselines.denoiser', 'diffusers')})")


def test_importing_the_models_imports_no_baseline_and_no_diffusers():
    loaded = run_python(f"import json, sys; import rrcm.models; print({LOADED})")
    assert not any(loaded.values()), loaded


def test_listing_the_archs_registers_dds_cheaply():
    # the registry imports rrcm.baselines.dds (it registers "dds" itself), which imports no denoiser code
    out = run_python("import json, sys; from rrcm.models import arch_names; "
                     f"names = arch_names(); loaded = {LOADED}; "
                     "print(json.dumps({'names': names, 'loaded': json.loads(loaded)}))")
    assert out["names"] == ["lenet", "lenet5", "cifar_resnet", "cifar_resnet20", "cifar_resnet110", "vit",
                            "rrcm_vit", "dds"]
    assert out["loaded"] == {"rrcm.baselines": True, "rrcm.baselines.dds": True,
                             "rrcm.baselines.denoiser": False, "diffusers": False}


def test_a_dds_config_resolves_in_a_fresh_process_without_importing_diffusers():
    out = run_python(
        "import json, sys; from rrcm.models import model_config; "
        "den = {'arch': 'ddpm_unet', 'unet': {'in_channels': 1, 'out_channels': 1, 'sample_size': 8}, "
        "'scheduler': {}}; "
        "common = dict(num_classes=10, in_channels=1, image_size=8, mean=[0.3], std=[0.4]); "
        "cfg = model_config('dds', **common, denoiser=den, classifier=model_config('lenet5', **common), sigma=0.5); "
        "print(json.dumps({'timestep': cfg['timestep'], 'diffusers': 'diffusers' in sys.modules}))")
    assert out == {"timestep": 259, "diffusers": False}


def test_arch_names_filters_composite_archs():
    trainable, composite = arch_names(composite=False), arch_names(composite=True)
    assert composite == ("dds",)
    assert set(trainable) | set(composite) == set(arch_names()) and not set(trainable) & set(composite)
    from rrcm.models import ARCHS, COMPOSITE_ARCHS

    assert (ARCHS, COMPOSITE_ARCHS) == (trainable, composite)
    assert is_arch("dds") and is_arch("vit") and not is_arch("resnet9000")


@pytest.fixture
def private_registry(monkeypatch):
    """Registrations made by a test are undone after it."""
    arch_names()  # the package's own arch modules are registered for good first, not into the copy
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


class Tiny(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = cfg
        self.linear = nn.Linear(cfg["in_channels"] * cfg["image_size"] ** 2, cfg["num_classes"])


def _check_tiny(cfg: dict) -> None:
    cfg["scale"] = registry.config_real(cfg, "scale", positive=True)


def test_register_arch_adds_a_buildable_arch(private_registry):
    register_arch("tiny_test", defaults=lambda cfg: {"scale": 1.0}, check=_check_tiny, build=Tiny)
    assert "tiny_test" in arch_names(composite=False) and is_arch("tiny_test")
    cfg = model_config("tiny_test", **COMMON, scale=2)
    assert cfg == {"arch": "tiny_test", **COMMON, "scale": 2.0}
    assert isinstance(build_model(cfg), Tiny)
    with pytest.raises(ValueError, match="'scale'"):
        model_config("tiny_test", **COMMON, scale=-1)
    with pytest.raises(ValueError, match=r"unknown model config key.*width.*valid keys: .*scale"):
        model_config("tiny_test", **COMMON, width=3)


def test_register_arch_refuses_a_second_registration_of_a_name(private_registry):
    with pytest.raises(ValueError, match="'vit' is already registered"):
        register_arch("vit", build=Tiny)
    with pytest.raises(ValueError, match="'dds' is already registered"):
        register_arch("dds", build=Tiny)
    with pytest.raises(TypeError, match="non-empty string"):
        register_arch("", build=Tiny)


def test_an_arch_without_own_keys_needs_only_build(private_registry):
    register_arch("plain_test", build=Tiny, composite=True)
    assert "plain_test" in arch_names(composite=True) and "plain_test" not in arch_names(composite=False)
    assert model_config("plain_test", **COMMON) == {"arch": "plain_test", **COMMON}
    with pytest.raises(ValueError, match="unknown model config key"):
        model_config("plain_test", **COMMON, depth=2)
