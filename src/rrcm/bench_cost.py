"""Inference cost per noise sample of each base classifier (`rrcm bench cost`).

Certification draws n0 + n noisy copies of every input (100 + 100,000 by default) and runs the base
classifier on each, so the cost of one forward per noise sample decides what a certificate costs.
rRCM's classifier is one ViT forward; diffusion denoised smoothing (DDS, Carlini et al. 2023) runs a
diffusion UNet (one denoising call) and then a classifier. For every base classifier this module
reports

- parameters and FLOPs of ONE sample's forward (MACs = FLOPs / 2): matrix products, convolutions
  and attention, counted on the meta device (no weights allocated); element-wise work is not counted;
- wall time per sample measured on this machine at a stated batch size and precision (fp32, or bf16
  autocast), the median over `repeats` timed forwards after `warmup` untimed ones;
- the cost of one certificate, (n0 + n) × the per-sample figures, in FLOPs and seconds;
- for each (DDS, rRCM) pair, the FLOPs ratio and the measured time ratio side by side.

Two scales:

- `paper_suite()`: the networks of the paper's comparison at random weights (cost does not depend on
  the weights): ImageNet rRCM-B (ViT-B/16 with a time token at 224²) against an ADM-class 256²
  unconditional UNet (Dhariwal & Nichol's model used by Carlini et al.) plus a BEiT-L/16-sized
  classifier at 512², and CIFAR-10 rRCM-B against the improved-diffusion CIFAR-10 UNet plus a
  ViT-B/16 at 224² (DDS upsamples CIFAR images 32 → 224 for it).
- `small_suite()` and `checkpoint_suite()`: the small models this repository trains (or any rrcm
  checkpoint), at their own input size.

How FLOPs are counted, forwards timed and the machine's load sampled is `rrcm.profiling`'s; this
module holds the networks, sums them per base classifier and prints the tables.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UserError, short_message
from .profiling import CONTENDED_CORES, PRECISIONS, count_model, describe_machine, meta_init, time_model

__all__ = ["CostSettings", "NetworkSpec", "ClassifierSpec", "Suite", "count_network", "paper_suite", "small_suite",
           "checkpoint_suite", "parse_checkpoint_items", "measure", "format_report", "run_cost_command",
           "ADM_256_UNCOND", "IDDPM_CIFAR10", "DenoiserStep"]

DEFAULT_N = 100_000
DEFAULT_N0 = 100
# Networks at or above this many MACs per sample are timed at `big_batch_size` (default 1): one
# forward already takes seconds there and its matrix products keep the cores busy at batch 1.
BIG_MACS = 100e9
DDS_TIMESTEP = 100  # any fixed timestep: a denoising call costs the same at every t

# ---- the DDS denoisers, as `diffusers.UNet2DModel` configurations

# ADM 256×256 unconditional (Dhariwal & Nichol 2021; the model Carlini et al. use on ImageNet):
# 256 model channels, channel mult (1, 1, 2, 2, 4, 4), 2 res blocks per level (3 on the way up),
# attention at 32, 16 and 8 px with 64 channels per head, BigGAN (residual) up/down-sampling,
# scale-shift norm for the time embedding, learned σ -> 6 output channels.
ADM_256_UNCOND: dict[str, Any] = {
    "sample_size": 256, "in_channels": 3, "out_channels": 6,
    "block_out_channels": (256, 256, 512, 512, 1024, 1024), "layers_per_block": 2,
    "down_block_types": ("ResnetDownsampleBlock2D",) * 3 + ("AttnDownBlock2D",) * 3,
    "up_block_types": ("AttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",) * 3,
    "downsample_type": "resnet", "upsample_type": "resnet", "attention_head_dim": 64,
    "resnet_time_scale_shift": "scale_shift", "norm_num_groups": 32,
}
# improved-diffusion CIFAR-10 (Nichol & Dhariwal 2021; Carlini et al.'s CIFAR-10 denoiser): 128 channels,
# mult (1, 2, 2, 2), 3 res blocks, attention at 16 and 8 px with 4 heads (64 channels each at 256
# channels), convolutional up/down-sampling, scale-shift norm, learned σ -> 6 output channels.
IDDPM_CIFAR10: dict[str, Any] = {
    "sample_size": 32, "in_channels": 3, "out_channels": 6,
    "block_out_channels": (128, 256, 256, 256), "layers_per_block": 3,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": 64, "resnet_time_scale_shift": "scale_shift", "norm_num_groups": 32,
}


class DenoiserStep(nn.Module):
    """One denoising call of a DDPM UNet as DDS makes it: [0, 1] pixels -> [-1, 1] -> the UNet's
    prediction at a fixed timestep. (Turning ε into x̂0 is element-wise and not counted.)"""

    def __init__(self, unet: nn.Module, timestep: int = DDS_TIMESTEP):
        super().__init__()
        self.unet = unet
        self.timestep = int(timestep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.full((x.shape[0],), self.timestep, dtype=torch.long, device=x.device)
        return self.unet(x * 2 - 1, t).sample


def _unet(config: dict[str, Any]) -> nn.Module:
    from diffusers import UNet2DModel

    return DenoiserStep(UNet2DModel(**config))


def _rrcm_model(arch: str, *, num_classes: int, in_channels: int, image_size: int, **overrides: Any) -> nn.Module:
    from .models import build_model, model_config

    return build_model(model_config(arch, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                                    mean=[0.5] * in_channels, std=[0.5] * in_channels, **overrides))


# ---- what gets measured

@dataclass(frozen=True)
class NetworkSpec:
    """One network that runs once per noise sample.

    `build` makes it with random weights on the current default device (it is called under
    `profiling.meta_init()` for counting); `load`, if given, makes the model that is timed (a checkpoint's
    trained weights), else `build` is used. `reference` holds published figures to compare with.
    """

    key: str
    description: str
    input_shape: tuple[int, int, int]  # (C, H, W) of one sample, pixels in [0, 1]
    build: Callable[[], nn.Module]
    load: Callable[[], nn.Module] | None = None
    reference: dict[str, Any] | None = None


@dataclass(frozen=True)
class ClassifierSpec:
    """A base classifier: the networks one noise sample goes through, in order."""

    label: str
    method: str  # "rrcm", "dds" or "other"
    networks: tuple[str, ...]


@dataclass
class Suite:
    name: str
    networks: list[NetworkSpec]
    classifiers: list[ClassifierSpec]
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (DDS label, rRCM label)
    timed: bool = True
    skipped: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class CostSettings:
    batch_size: int = 8
    big_batch_size: int = 1
    precisions: tuple[str, ...] = PRECISIONS
    repeats: int = 3
    warmup: int = 1
    n: int = DEFAULT_N
    n0: int = DEFAULT_N0
    seed: int = 0
    wait_idle: float = 0.0  # seconds to wait for an idle machine before each timed forward (0: don't)
    device: str = "cpu"  # where the timed forwards run: cpu, cuda or cuda:N

    def validate(self) -> None:
        if self.device != "cpu" and not (self.device == "cuda" or self.device.startswith("cuda:")):
            raise UserError(f"--device must be cpu, cuda or cuda:N, got {self.device!r}")
        if self.device != "cpu" and not torch.cuda.is_available():
            raise UserError(f"--device {self.device}: no CUDA device on this machine; use --device cpu")
        for name in ("batch_size", "big_batch_size", "repeats", "n"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup", "n0", "wait_idle"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name} must be at least 0, got {getattr(self, name)}")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad or not self.precisions:
            raise UserError(f"--precision must be a comma-separated list of {', '.join(PRECISIONS)}, "
                            f"got {','.join(self.precisions)!r}")

    def batch_for(self, macs: int) -> int:
        return self.big_batch_size if macs >= BIG_MACS else self.batch_size


def paper_suite(*, timed: bool = False) -> Suite:
    """The paper's comparison at random weights: ImageNet and CIFAR-10, rRCM-B against DDS."""
    nets = [
        NetworkSpec("rrcm-b-imagenet", "rRCM-B ImageNet: ViT-B/16 + time token, 224², 1000 classes", (3, 224, 224),
                    lambda: _rrcm_model("rrcm_vit", num_classes=1000, in_channels=3, image_size=224,
                                        size="imagenet-b"),
                    reference={"macs": 17.6e9, "note": "ViT-B/16 at 224 (197 tokens; +1 time token here)"}),
        NetworkSpec("adm-unet-256", "DDS ImageNet denoiser: ADM 256² unconditional UNet, one call", (3, 256, 256),
                    lambda: _unet(ADM_256_UNCOND),
                    reference={"params": 553e6, "macs": 1.1e12, "note": "Dhariwal & Nichol 256² uncond"}),
        NetworkSpec("beit-l16-512", "DDS ImageNet classifier: ViT-L/16 (BEiT-L-sized), 512², 1000 classes",
                    (3, 512, 512),
                    lambda: _rrcm_model("vit", num_classes=1000, in_channels=3, image_size=512, patch_size=16,
                                        width=1024, depth=24, heads=16),
                    reference={"params": 305e6, "macs": 362e9, "note": "BEiT-L/16 at 512 (1025 tokens)"}),
        NetworkSpec("rrcm-b-cifar10", "rRCM-B CIFAR-10: ViT-B, patch 4 + time token, 32², 10 classes", (3, 32, 32),
                    lambda: _rrcm_model("rrcm_vit", num_classes=10, in_channels=3, image_size=32, size="cifar10-b")),
        NetworkSpec("iddpm-unet-cifar10", "DDS CIFAR-10 denoiser: improved-diffusion 32² UNet, one call", (3, 32, 32),
                    lambda: _unet(IDDPM_CIFAR10),
                    reference={"params": 52e6, "note": "Nichol & Dhariwal CIFAR-10 (~52M)"}),
        NetworkSpec("vit-b16-224-c10", "DDS CIFAR-10 classifier: ViT-B/16, 224² (32→224), 10 classes", (3, 224, 224),
                    lambda: _rrcm_model("vit", num_classes=10, in_channels=3, image_size=224, patch_size=16,
                                        width=768, depth=12, heads=12),
                    reference={"macs": 17.6e9, "note": "ViT-B/16 at 224"}),
    ]
    classifiers = [
        ClassifierSpec("ImageNet rRCM-B", "rrcm", ("rrcm-b-imagenet",)),
        ClassifierSpec("ImageNet DDS", "dds", ("adm-unet-256", "beit-l16-512")),
        ClassifierSpec("CIFAR-10 rRCM-B", "rrcm", ("rrcm-b-cifar10",)),
        ClassifierSpec("CIFAR-10 DDS", "dds", ("iddpm-unet-cifar10", "vit-b16-224-c10")),
    ]
    return Suite("paper", nets, classifiers, pairs=[("ImageNet DDS", "ImageNet rRCM-B"),
                                                      ("CIFAR-10 DDS", "CIFAR-10 rRCM-B")], timed=timed)


def _digits_dds_config(digits: dict[str, int]) -> dict[str, Any]:
    """A digits DDS model config: the "small" DDPM denoiser + a LeNet-5 (what `rrcm dds assemble` pairs)."""
    from .baselines.denoiser import denoiser_model_config
    from .models import model_config

    common = {**digits, "mean": [0.5] * digits["in_channels"], "std": [0.5] * digits["in_channels"]}
    return model_config("dds", **common, denoiser=denoiser_model_config(digits["in_channels"], digits["image_size"]),
                        classifier=model_config("lenet5", **common), sigma=0.25)


def small_suite() -> Suite:
    """The repository's small default models on digits (8×8 grey, 10 classes), at random weights.

    digits DDS (the "dds" arch: the "small" DDPM UNet denoiser, one step at σ = 0.25, + LeNet-5) is
    included when it builds, else listed as skipped with the reason.
    """
    from .models import build_model

    digits = {"num_classes": 10, "in_channels": 1, "image_size": 8}
    nets = [
        NetworkSpec("digits-lenet5", "digits LeNet-5 (the Gaussian baseline of `rrcm demo`)", (1, 8, 8),
                    lambda: _rrcm_model("lenet5", **digits)),
        NetworkSpec("digits-rrcm", "digits rRCM ViT (size \"digits\")", (1, 8, 8),
                    lambda: _rrcm_model("rrcm_vit", **digits, size="digits")),
    ]
    classifiers = [ClassifierSpec("digits LeNet-5", "other", ("digits-lenet5",)),
                   ClassifierSpec("digits rRCM", "rrcm", ("digits-rrcm",))]
    suite = Suite("small", nets, classifiers)
    try:  # a baseline's model: should it not build, the table says why and the rest is still measured
        dds_config = _digits_dds_config(digits)
        with meta_init():
            build_model(dds_config)
    except Exception as e:  # noqa: BLE001
        suite.skipped.append({"what": "digits DDS", "reason": f"cannot build the 'dds' arch for digits: "
                                                             f"{type(e).__name__}: {short_message(e)}"})
        return suite
    nets.append(NetworkSpec("digits-dds", "digits DDS: small DDPM UNet (1 step) + LeNet-5", (1, 8, 8),
                            lambda: build_model(dds_config)))
    classifiers.append(ClassifierSpec("digits DDS", "dds", ("digits-dds",)))
    suite.pairs.append(("digits DDS", "digits rRCM"))
    return suite


def parse_checkpoint_items(items: Iterable[str]) -> list[tuple[str, str]]:
    """`LABEL=PATH` (or a bare PATH, which is its own label) -> [(label, path)]."""
    out = []
    for item in items:
        if "=" in item and not Path(item).exists():
            label, path = item.split("=", 1)
            if not label or not path:
                raise UserError(f"--checkpoint expects LABEL=PATH, got {item!r}")
        else:
            label = path = item
        out.append((label, path))
    labels = [label for label, _ in out]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise UserError(f"--checkpoint labels must differ; {', '.join(duplicates)} is given twice (use LABEL=PATH)")
    return out


def checkpoint_suite(items: Sequence[tuple[str, str]]) -> Suite:
    """Checkpoints written by rrcm: counted from their config, timed with their weights.

    Every dds-arch checkpoint is paired with every rrcm_vit checkpoint of the same input shape.
    """
    from .checkpoint import load_checkpoint, read_checkpoint_config

    nets, classifiers = [], []
    shapes: dict[str, tuple[str, tuple[int, int, int]]] = {}
    for label, path in items:
        config = read_checkpoint_config(path)  # UserError (one line) for a missing or unreadable file
        if config.get("kind") == "rrcm_encoder":
            raise UserError(f"{path} is a pre-trained rRCM encoder, not a classifier; give the fine-tuned "
                            "checkpoint (`rrcm finetune --pretrained ...`)")
        model_cfg = config["model"]
        try:
            shape = (int(model_cfg["in_channels"]), int(model_cfg["image_size"]), int(model_cfg["image_size"]))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"checkpoint {path} does not record in_channels/image_size; re-save it with rrcm") from None
        arch = str(model_cfg.get("arch"))

        def build(cfg=model_cfg, p=path):
            from .models import build_model

            try:
                return build_model(cfg)
            except (KeyError, TypeError, ValueError) as e:
                raise UserError(f"checkpoint {p} describes a model rrcm cannot build ({short_message(e)}); "
                                "it may come from a newer rrcm version") from None

        nets.append(NetworkSpec(f"ckpt:{label}", f"{label}: {arch} from {path}", shape, build,
                                load=lambda p=path: load_checkpoint(p)[0]))
        method = {"rrcm_vit": "rrcm", "dds": "dds"}.get(arch, "other")
        classifiers.append(ClassifierSpec(label, method, (f"ckpt:{label}",)))
        shapes[label] = (method, shape)
    pairs = [(a, b) for a, (ma, sa) in shapes.items() for b, (mb, sb) in shapes.items()
             if ma == "dds" and mb == "rrcm" and sa == sb]
    return Suite("checkpoints", nets, classifiers, pairs=pairs)


# ---- the whole measurement

def count_network(spec: NetworkSpec) -> dict[str, Any]:
    """Parameters and FLOPs of one sample's forward; counted on meta (on the CPU if meta fails)."""
    return count_model(spec.build, spec.input_shape)


def _log(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def _measure_network(spec: NetworkSpec, suite: Suite, settings: CostSettings, progress: bool) -> dict[str, Any]:
    """One network's report entry: its counts and, for a timed suite, its timings per precision."""
    _log(progress, f"counting {spec.key} ...")
    counted = count_network(spec)
    entry = {"suite": suite.name, "description": spec.description, "input_shape": list(spec.input_shape),
             **counted, "timings": {}}
    if spec.reference:
        entry["reference"] = dict(spec.reference)
    if not suite.timed:
        return entry
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = (spec.load or spec.build)().eval()
    batch = settings.batch_for(counted["macs"])
    for precision in settings.precisions:
        _log(progress, f"timing {spec.key}: {precision}, batch {batch}, "
                       f"{settings.warmup} + {settings.repeats} forwards ...")
        entry["timings"][precision] = time_model(model, spec.input_shape, batch_size=batch, precision=precision,
                                                 repeats=settings.repeats, warmup=settings.warmup,
                                                 seed=settings.seed, wait_idle=settings.wait_idle,
                                                 device=settings.device)
    del model
    if settings.device != "cpu":
        torch.cuda.empty_cache()
    return entry


def measure(suites: Sequence[Suite], settings: CostSettings, *, progress: bool = False) -> dict[str, Any]:
    """Count (and, for timed suites, time) every network; sum per classifier; compare the pairs."""
    settings.validate()
    samples = settings.n + settings.n0
    report: dict[str, Any] = {
        "meta": {**describe_machine(), "settings": {"batch_size": settings.batch_size,
                                                    "big_batch_size": settings.big_batch_size,
                                                    "big_macs_threshold": BIG_MACS,
                                                    "precisions": list(settings.precisions),
                                                    "repeats": settings.repeats, "warmup": settings.warmup,
                                                    "wait_idle": settings.wait_idle, "device": settings.device,
                                                    "n": settings.n, "n0": settings.n0}},
        "networks": {}, "classifiers": [], "pairs": [], "skipped": [],
    }
    for suite in suites:
        report["skipped"] += [{"suite": suite.name, **s} for s in suite.skipped]
        for spec in suite.networks:
            report["networks"][spec.key] = _measure_network(spec, suite, settings, progress)
        for clf in suite.classifiers:
            nets = [report["networks"][k] for k in clf.networks]
            flops = sum(n["flops"] for n in nets)
            per_sample = {p: (sum(n["timings"][p]["seconds_per_sample"] for n in nets)
                              if all(p in n["timings"] for n in nets) else None) for p in settings.precisions}
            report["classifiers"].append({
                "suite": suite.name, "label": clf.label, "method": clf.method, "networks": list(clf.networks),
                "params": sum(n["params"] for n in nets), "flops": flops, "macs": flops // 2,
                "seconds_per_sample": per_sample,
                "certificate": {"samples": samples, "flops": flops * samples,
                                "seconds": {p: (None if s is None else s * samples) for p, s in per_sample.items()}},
            })
        by_label = {c["label"]: c for c in report["classifiers"] if c["suite"] == suite.name}
        for dds, rrcm in suite.pairs:
            a, b = by_label[dds], by_label[rrcm]
            report["pairs"].append({
                "suite": suite.name, "dds": dds, "rrcm": rrcm, "flops_ratio": a["flops"] / b["flops"],
                "time_ratio": {p: (a["seconds_per_sample"][p] / b["seconds_per_sample"][p]
                                   if a["seconds_per_sample"][p] and b["seconds_per_sample"][p] else None)
                               for p in settings.precisions},
            })
    return report


# ---- the readable table

_PREFIXES = ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def _si(value: float, digits: int = 3) -> str:
    for scale, prefix in _PREFIXES:
        if abs(value) >= scale:
            return f"{value / scale:.{digits}g} {prefix}"
    return f"{value:.{digits}g} "


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for limit, scale, unit in ((1e-3, 1e-6, "µs"), (1.0, 1e-3, "ms"), (120.0, 1.0, "s"), (7200.0, 60.0, "min"),
                               (172800.0, 3600.0, "h")):
        if seconds < limit:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 86400.0:.3g} d"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}×"


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(header), "-" * len(line(header)), *(line(r) for r in rows)]


def _reference_text(net: dict[str, Any]) -> str:
    ref = net.get("reference") or {}
    parts = []
    if "params" in ref:
        parts.append(f"{net['params'] / ref['params'] - 1:+.2%} params vs {_si(ref['params'])}")
    if "macs" in ref:
        parts.append(f"{net['macs'] / ref['macs'] - 1:+.2%} MACs vs {_si(ref['macs'])}MAC")
    return ", ".join(parts)


def format_report(report: dict[str, Any]) -> str:
    """The readable tables: networks, base classifiers with certificate cost, DDS/rRCM pairs."""
    meta = report["meta"]
    settings = meta["settings"]
    precisions = settings["precisions"]
    samples = settings["n"] + settings["n0"]
    device = settings.get("device", "cpu")
    where = (f"{meta['cpu']}, {meta['torch_threads']} threads" if device == "cpu"
             else f"{meta.get('gpu') or device} ({device})")
    out = [f"Inference cost per noise sample  (torch {meta['torch']}, {where}, {meta['date']})", ""]
    per_sample = [f"{p} /sample" for p in precisions]
    header = ["network", "input", "params", "FLOPs", "MACs", "batch", *per_sample, "reference"]
    rows = []
    for key, net in report["networks"].items():
        timings = net["timings"]
        batches = ",".join(str(b) for b in sorted({t["batch_size"] for t in timings.values()})) or "-"
        rows.append([key, "x".join(map(str, net["input_shape"])), _si(net["params"]), _si(net["flops"]),
                     _si(net["macs"]), batches,
                     *(_duration(timings[p]["seconds_per_sample"]) if p in timings else "-" for p in precisions),
                     _reference_text(net)])
    out += _table(header, rows, right=set(range(2, 6 + len(precisions))))
    out += ["", f"Base classifiers: one noise sample, and one certificate at n0 + n = {settings['n0']:,} + "
                f"{settings['n']:,} = {samples:,} samples"]
    header = ["classifier", "networks", "params", "FLOPs", "MACs", *per_sample, "cert. FLOPs",
              *(f"cert. {p}" for p in precisions)]
    rows = []
    for c in report["classifiers"]:
        rows.append([c["label"], " + ".join(c["networks"]), _si(c["params"]), _si(c["flops"]), _si(c["macs"]),
                     *(_duration(c["seconds_per_sample"][p]) for p in precisions), _si(c["certificate"]["flops"]),
                     *(_duration(c["certificate"]["seconds"][p]) for p in precisions)])
    out += _table(header, rows, right=set(range(2, len(header))))
    if report["pairs"]:
        out += ["", "DDS against rRCM (how many times more per noise sample)"]
        header = ["pair", "FLOPs ratio", *(f"time ratio {p}" for p in precisions)]
        rows = [[f"{p['dds']} / {p['rrcm']}", _ratio(p["flops_ratio"]),
                 *(_ratio(p["time_ratio"][q]) for q in precisions)] for p in report["pairs"]]
        out += _table(header, rows, right=set(range(1, len(header))))
    out += ["", "FLOPs: FlopCounterMode over one sample's forward (matrix products, convolutions, attention; "
                "element-wise work not counted); MACs = FLOPs / 2.",
            f"Time: median of {settings['repeats']} forwards after {settings['warmup']} warm-up, divided by the "
            f"batch; batch {settings['batch_size']}, or {settings['big_batch_size']} from "
            f"{_si(settings['big_macs_threshold'])}MAC per sample; bf16 = "
            f"{'CPU' if device == 'cpu' else 'CUDA'} autocast. "
            "'-': not timed (paper scale needs --time-paper)."]
    busy = [b for net in report["networks"].values() for t in net["timings"].values()
            for b in t["busy_elsewhere_per_forward"]]
    contended = [b for b in busy if b > CONTENDED_CORES]
    if contended:
        out.append(f"warning: {len(contended)} of {len(busy)} timed forwards ran beside other work (up to "
                   f"{max(contended):.2f} cores busy elsewhere); those times are not clean: rerun on an idle "
                   "machine, or with --wait-idle SECONDS")
    if busy and meta.get("glibc_tunables") is None:
        out.append("note: timed without GLIBC_TUNABLES (rrcm certify sets glibc malloc thresholds; "
                   "benchmarks/inference_cost.py does too)")
    for s in report["skipped"]:
        out.append(f"skipped {s['what']}: {s['reason']}")
    return "\n".join(out) + "\n"


# ---- the command (`rrcm bench cost`; the parser lives in rrcm.cli)

def run_cost_command(args) -> int:
    precisions = tuple(p.strip() for p in args.precision.split(",") if p.strip())
    settings = CostSettings(batch_size=args.batch_size, big_batch_size=args.big_batch_size, precisions=precisions,
                            repeats=args.repeats, warmup=args.warmup, n=args.n, n0=args.n0, wait_idle=args.wait_idle,
                            device=args.device)
    settings.validate()
    suites = []
    if args.checkpoint:
        suites.append(checkpoint_suite(parse_checkpoint_items(args.checkpoint)))  # checks the files first
    if not args.no_paper:
        suites.insert(0, paper_suite(timed=args.time_paper))
    elif args.time_paper:
        raise UserError("--time-paper and --no-paper contradict each other; drop one")
    if args.small:
        suites.append(small_suite())
    if not suites:
        raise UserError("nothing to measure: drop --no-paper, or add --small or --checkpoint LABEL=PATH")
    report = measure(suites, settings, progress=not args.quiet)
    print(format_report(report), end="")
    if args.json:
        from .fileio import write_json_atomic

        write_json_atomic(args.json, report)
        print(f"results written to {args.json}")
    return 0
