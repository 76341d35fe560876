"""`rrcm <command>`: a thin command line over the library.

Each command parses its options, calls the library (`rrcm.certify.plan_certification`, the training
functions, `rrcm.report`, ...) and prints what it produced. The library validates, writes the resolved
config next to its outputs, and raises `UserError` for user mistakes; the CLI prints those as one line
`rrcm: error: <problem>; <fix>` with exit status 2 (never a traceback). Option lists in the help come from
the registries (archs, methods, data sets, procedures), so they list what the library takes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .errors import UserError

if TYPE_CHECKING:
    from .distributed import DistContext
    from .train.config import TrainConfig

# glibc returns freed memory to the OS eagerly; for the large, short-lived tensors of noise batches
# that costs a page fault storm. Keeping it (thresholds of 4 GiB) made CPU certification 2–3× faster
# here. It must be set before the process starts, so the CLI re-executes itself once with it
# (`reexec_with_malloc_tunables`; benchmarks/ use the same).
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296"
# the commands that re-execute themselves with MALLOC_TUNABLES (not their --dry-run)
HEAVY_COMMANDS = ("certify", "train", "finetune", "pretrain", "train-denoiser", "bench", "demo")


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see `{self.prog} --help`)")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _names(names: Sequence[str]) -> str:
    return ", ".join(names)


# -- presets ---------------------------------------------------------------------------------------
PRESET_DIR = Path(__file__).parent / "configs"


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name_or_path: str) -> dict[str, Any]:
    import yaml

    path = Path(name_or_path)
    if not path.is_file():
        path = PRESET_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise UserError(f"unknown preset {name_or_path!r}; choose one of {', '.join(list_presets())} or give a YAML file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"preset {path} is not valid YAML ({str(e).splitlines()[0]}); fix the file") from None
    if not isinstance(values, dict):
        raise UserError(f"preset {path} must be a mapping of option: value")
    return values


# -- train -----------------------------------------------------------------------------------------
TRAIN_FLAGS = {  # flag -> (TrainConfig field, type, help)
    "--data": ("data", str, "data set: {datasets}"),
    "--data-root": ("data_root", str, "folder holding the data set's files (not needed for digits)"),
    "--image-size": ("image_size", int, "imagefolder: resize + centre-crop side (default 224)"),
    "--arch": ("arch", str, "model architecture: {archs}"),
    "--method": ("method", str, "training objective: {methods}"),
    "--sigma": ("sigma", float, "training noise σ on [0, 1] pixels"),
    "--epochs": ("epochs", int, "training epochs"),
    "--batch-size": ("batch_size", int, "global batch size"),
    "--optimizer": ("optimizer", str, "optimizer: {optimizers}"),
    "--lr": ("lr", float, "peak learning rate (warm-up, then cosine decay)"),
    "--momentum": ("momentum", float, "SGD momentum (Nesterov)"),
    "--weight-decay": ("weight_decay", float, "weight decay (not on biases and norms)"),
    "--warmup-epochs": ("warmup_epochs", float, "linear warm-up length in epochs"),
    "--lr-schedule": ("lr_schedule", str, "{lr_schedules}: the learning rate set every step, or once per epoch "
                                          "(the rRCM authors' fine-tuning: epoch 0 at lr 0)"),
    "--augmentation": ("augmentation", str, "{augmentations}: the data set's standard augmentation, the rRCM "
                                            "authors' CIFAR-10 (resized crop 0.4-1 + flip) or ImageNet one"),
    "--num-noise": ("num_noise", int, "consistency: noisy copies per image (m)"),
    "--lbd": ("lbd", float, "consistency: weight λ of the KL term"),
    "--eta": ("eta", float, "consistency: weight η of the entropy term"),
    "--seed": ("seed", int, "random seed"),
    "--device": ("device", str, "{devices}"),
    "--precision": ("precision", str, "{precisions} (autocast; fp16 with loss scaling)"),
    "--checkpoint-every": ("checkpoint_every", int, "epochs between resumable checkpoints"),
    "--pretrained": ("pretrained", str, "rRCM: encoder.safetensors from `rrcm pretrain` (arch rrcm_vit)"),
    "--layer-decay": ("layer_decay", float, "layer-wise learning-rate decay for ViTs, e.g. 0.65"),
    "--label-smoothing": ("label_smoothing", float, "label smoothing ε"),
    "--mixup": ("mixup", float, "mixup Beta(α, α) parameter (0: off)"),
    "--cutmix": ("cutmix", float, "CutMix Beta(α, α) parameter (0: off)"),
    "--grad-clip": ("grad_clip", float, "clip the gradient norm at this value"),
}

# `rrcm finetune` is `rrcm train` with the rRCM fine-tuning defaults (flags and presets override them). As the
# authors' fine-tuning: no gradient clipping, the learning rate set once per epoch.
FINETUNE_DEFAULTS = {"arch": "rrcm_vit", "method": "consistency", "optimizer": "adamw", "lr": 5e-4,
                     "weight_decay": 0.05, "layer_decay": 0.65, "num_noise": 2, "lbd": 10.0, "eta": 0.5,
                     "warmup_epochs": 1.0, "lr_schedule": "epoch"}

PRETRAIN_FLAGS = {  # flag -> (PretrainConfig field, type, help)
    "--data": ("data", str, "data set: {datasets}"),
    "--data-root": ("data_root", str, "folder holding the data set's files (not needed for digits)"),
    "--image-size": ("image_size", int, "imagefolder: resize + centre-crop side (default 224)"),
    "--steps": ("steps", int, "optimisation steps"),
    "--batch-size": ("batch_size", int, "global batch size (negatives = the rest of it)"),
    "--lr": ("lr", float, "peak learning rate (AdamW; warm-up, then cosine decay)"),
    "--weight-decay": ("weight_decay", float, "AdamW weight decay"),
    "--warmup-steps": ("warmup_steps", int, "linear warm-up steps"),
    "--grad-clip": ("grad_clip", float, "gradient-norm clipping"),
    "--temperature": ("temperature", float, "InfoNCE temperature τ"),
    "--ema-schedule": ("ema_schedule", str, "{ema_schedules}: the target's EMA rate from --ema-base to --ema-final "
                                             "(rrcm: the authors', the default; sigmoid: rrcm's earlier ramp)"),
    "--ema-base": ("ema_base", float, "EMA rate of the target network at the start (default 0.99)"),
    "--ema-final": ("ema_final", float, "EMA rate at the end of the schedule (default 0.9999)"),
    "--ema-sharpness": ("ema_sharpness", float, "A of the rrcm EMA schedule (15 for CIFAR-10, 10 for ImageNet)"),
    "--curriculum": ("curriculum", str, "{curricula}: when the grid grows 21 -> 41 -> 81 points (rrcm: the "
                                        "authors', the default; equal-stages: a third on each)"),
    "--view-noise": ("view_noise", str, "{view_noise}: the instance term's views take the trajectory term's "
                                        "noise (shared, the authors') or their own"),
    "--trajectory-augment": ("trajectory_augment", str, "{trajectory_augments}: the trajectory image's "
                                                        "augmentation (flip: the authors'; standard: crop + flip)"),
    "--trajectory-weight": ("trajectory_weight", float, "weight of the trajectory term (0: ablate it)"),
    "--instance-weight": ("instance_weight", float, "weight of the instance-discrimination term (0: ablate it)"),
    "--crop-scale-min": ("crop_scale_min", float, "smallest random-resized-crop area for the views"),
    "--encoder-init": ("encoder_init", str, "{encoder_inits}: the encoder's initial weights (moco-v3: the authors' "
                                            "ImageNet pre-training)"),
    "--seed": ("seed", int, "random seed"),
    "--device": ("device", str, "{devices}"),
    "--precision": ("precision", str, "{precisions} (autocast; fp16 with loss scaling)"),
    "--checkpoint-every": ("checkpoint_every", int, "steps between resumable checkpoints"),
    "--log-every": ("log_every", int, "steps per metrics row"),
}


def _registry_names() -> dict[str, str]:
    """What the flags' help lists, read from the registries: they cannot go stale."""
    from .baselines.denoiser import BETA_SCHEDULES, UNET_SIZES
    from .data import DATASETS
    from .distributed import DEVICE_CHOICES
    from .models import arch_names
    from .data.augment import TRAIN_AUGMENTATIONS
    from .diffusion import CURRICULA
    from .train.engine import LR_SCHEDULES, OPTIMIZERS, PRECISIONS
    from .train.objectives import METHODS
    from .train.pretrain import EMA_SCHEDULES, ENCODER_INITS, TRAJECTORY_AUGMENTS, VIEW_NOISE

    return {"datasets": _names(DATASETS), "archs": _names(arch_names(composite=False)), "methods": _names(METHODS),
            "optimizers": _names(OPTIMIZERS), "precisions": _names(PRECISIONS), "devices": DEVICE_CHOICES,
            "unet_sizes": _names(UNET_SIZES), "beta_schedules": _names(BETA_SCHEDULES),
            "ema_schedules": _names(EMA_SCHEDULES), "curricula": _names(CURRICULA), "view_noise": _names(VIEW_NOISE),
            "trajectory_augments": _names(TRAJECTORY_AUGMENTS), "lr_schedules": _names(LR_SCHEDULES),
            "augmentations": _names(TRAIN_AUGMENTATIONS), "encoder_inits": _names(ENCODER_INITS)}


def _add_flags(p, flags: dict) -> None:
    """The flags of a training command; the config validates their values (and a preset's) itself."""
    names = _registry_names()
    p.add_argument("--preset", help=f"YAML preset ({', '.join(list_presets())}) or a YAML file; flags override it")
    for flag, (_, kind, text) in flags.items():
        p.add_argument(flag, type=kind, default=None, help=text.format(**names))
    p.add_argument("--arch-option", action="append", default=[], metavar="KEY=VALUE",
                   help="architecture option, e.g. width=64 or size=tiny (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_train_parser(sub) -> None:
    for name, short, text, defaults in (
        ("train", "train a smoothed-classifier baseline (Gaussian or consistency)",
         "Train a base classifier with Gaussian noise augmentation or consistency regularisation.", {}),
        ("finetune", "fine-tune an rRCM classifier for one smoothing σ", "Fine-tune an rRCM classifier (time-conditioned ViT + linear head) for one smoothing σ: "
                     "noise 2σ in [-1, 1] space, conditioning snapped to the Karras grid, cross-entropy plus the "
                     "consistency regulariser, AdamW with layer-wise decay. Give --pretrained, or omit it for "
                     "the no-pre-training ablation.", FINETUNE_DEFAULTS)):
        p = sub.add_parser(name, help=short,
                           description=text + " Re-running the same command resumes an interrupted run.")
        _add_flags(p, TRAIN_FLAGS)
        p.add_argument("--freeze-head", action="store_true",
                       help="ablation: keep the head at its initial values (as the authors' released code does)")
        p.add_argument("--no-augment", action="store_true", help="disable the data set's standard augmentation")
        p.add_argument("--ignore-class-names", action="store_true",
                       help="fine-tune even if --pretrained was pre-trained on data with other class names")
        p.add_argument("--out", required=True, help="output folder (checkpoint, config.json, metrics.csv)")
        p.set_defaults(run=run_train, base_defaults=defaults)


def add_pretrain_parser(sub) -> None:
    p = sub.add_parser("pretrain", help="pre-train an rRCM encoder by contrastive denoising",
                       description="Pre-train a time-conditioned ViT with the trajectory and instance-discrimination "
                                   "InfoNCE terms (global-batch negatives, EMA target). Re-running resumes.")
    _add_flags(p, PRETRAIN_FLAGS)
    p.add_argument("--one-sided-instance", action="store_true",
                   help="rrcm's earlier instance term: one direction only (the authors' is symmetric, the default)")
    p.add_argument("--clip-during-warmup", action="store_true",
                   help="rrcm's earlier clipping: from the first step (the authors' clip after warm-up only)")
    p.add_argument("--no-blur", action="store_true", help="no Gaussian blur in the views (tiny images)")
    p.add_argument("--freeze-patch-embed", action="store_true",
                   help="keep the patch embedding at its initial weights (the authors' ImageNet pre-training)")
    p.add_argument("--out", required=True, help="output folder (encoder.safetensors, config.json, metrics.csv)")
    p.set_defaults(run=run_pretrain)


def _collect(args, flags: dict, base: dict) -> dict[str, Any]:
    """Dataclass defaults < command defaults < preset < flags."""
    values: dict[str, Any] = dict(base)
    if args.preset:
        values.update(load_preset(args.preset))
    given = {field: getattr(args, flag.lstrip("-").replace("-", "_")) for flag, (field, _, _) in flags.items()}
    given = {k: v for k, v in given.items() if v is not None}
    # presets may hold settings per smoothing σ (e.g. λ): they apply to the σ chosen, below the flags
    per_sigma = values.pop("per_sigma", None)
    if per_sigma:
        sigma = given.get("sigma", values.get("sigma"))
        matches = [v for k, v in per_sigma.items() if sigma is not None and abs(float(k) - float(sigma)) < 1e-9]
        if matches:
            values.update(matches[0])
    values.update(given)
    if args.arch_option:
        values["arch_options"] = {**values.get("arch_options", {}), **_parse_key_values(args.arch_option)}
    return values


def _resolve_or_run(args, device: str, resolve: Callable[[], dict], run: Callable[["DistContext"], Path],
                    artefact: str) -> int:
    """`--dry-run` prints what `resolve` gives; otherwise `run` (under torchrun, in every process, inside one
    process group) and print the path of what it wrote."""
    if args.dry_run:
        _print_json(resolve())
        return 0
    from .distributed import distributed

    with distributed(device) as ctx:
        path = run(ctx)
    if ctx.is_main:
        print(f"{artefact}: {path}")
    return 0


def run_pretrain(args) -> int:
    from .train.pretrain import PretrainConfig, pretrain, resolve_pretrain_config

    values = _collect(args, PRETRAIN_FLAGS, {})
    if args.one_sided_instance:
        values["symmetric"] = False
    if args.clip_during_warmup:
        values["clip_during_warmup"] = True
    if args.no_blur:
        values["blur"] = False
    if args.freeze_patch_embed:
        values["freeze_patch_embed"] = True
    cfg = PretrainConfig.from_dict(values)

    def resolve() -> dict:
        from .data import probe_dataset

        cfg.validate()
        info, _ = probe_dataset(cfg.data, "train", cfg.data_root, image_size=cfg.image_size)  # decodes no image
        return resolve_pretrain_config(cfg, info)

    return _resolve_or_run(args, cfg.device, resolve,
                           lambda ctx: pretrain(cfg, args.out, progress=not args.quiet, ctx=ctx), "encoder")


def _parse_key_values(items: Sequence[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--arch-option expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def train_config_from_args(args) -> "TrainConfig":
    from .train.config import TrainConfig

    values = _collect(args, TRAIN_FLAGS, getattr(args, "base_defaults", {}))
    if args.no_augment:
        values["augment"] = False
    if args.freeze_head:
        values["freeze_head"] = True
    return TrainConfig.from_dict(values)


def run_train(args) -> int:
    from .train.classifier import resolve_run_config, train_classifier

    cfg = train_config_from_args(args)
    return _resolve_or_run(args, cfg.device,
                           lambda: resolve_run_config(cfg, ignore_class_names=args.ignore_class_names),
                           lambda ctx: train_classifier(cfg, args.out, progress=not args.quiet,
                                                        ignore_class_names=args.ignore_class_names),
                           "checkpoint")


# -- certify ---------------------------------------------------------------------------------------
def add_certify_parser(sub) -> None:
    from .certify import PRECISIONS
    from .distributed import DEVICE_CHOICES
    from .smoothing.procedures import SEQUENCES, SequentialCertify
    from .smoothing.runner import PROCEDURES

    p = sub.add_parser("certify", help="certify a data set with a smoothed classifier (Cohen et al.'s CERTIFY)",
                       description="Run CERTIFY on every --skip-th test example and write a tab-separated log "
                                   "(Cohen's columns first). Re-running the same command resumes; under torchrun "
                                   "the examples are sharded across processes and the logs merged.")
    p.add_argument("--checkpoint", required=True, help="model.safetensors written by rrcm")
    p.add_argument("--data", default=None, help="data set (default: the checkpoint's)")
    p.add_argument("--data-root", default=None, help="folder holding the data set's files")
    p.add_argument("--split", default="test", help="train or test (default test)")
    p.add_argument("--sigma", type=float, default=None, help="smoothing σ on [0,1] pixels (default: the checkpoint's)")
    # Cohen's spellings --N0/--N work too; under torchrun write --N (torchrun takes --n for its own --nnodes).
    p.add_argument("--n0", "--N0", type=int, default=100, dest="n0", help="selection samples (default 100)")
    p.add_argument("--n", "--N", type=int, default=100_000, dest="n",
                   help="estimation samples (default 100000); the budget, the most it may draw, with --procedure sequential")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability (default 0.001)")
    p.add_argument("--batch-size", type=int, default=1000, help="noise samples per forward pass")
    p.add_argument("--skip", type=int, default=1, help="certify every skip-th example (Cohen's subset)")
    p.add_argument("--max-index", type=int, default=-1, dest="max_index",
                   help="Cohen's --max: stop at this example index (-1: all)")
    p.add_argument("--seed", type=int, default=0, help="noise seed; example idx uses its own stream from (seed, idx)")
    p.add_argument("--precision", default="auto",
                   help=f"{PRECISIONS[0]} (default), {_names(PRECISIONS[1:-1])} or {PRECISIONS[-1]} (autocast). "
                        "auto picks what is faster here, once per run, and records the concrete value in <out>.json "
                        "(a resume reuses it; --dry-run times nothing): bf16 on a CUDA GPU that supports it; fp32 on "
                        "a CPU without native bf16 (no avx512_bf16 or amx_bf16 flag), where bf16 made LeNet-5 "
                        "certification 5-7x slower (AVX2-only CPU, issue 12); otherwise a ~1.5 s probe times both on "
                        "this model at this batch size, takes bf16 only if it is at least 1.25x faster, and caches "
                        "the choice in $XDG_CACHE_HOME/rrcm (~/.cache/rrcm). Measured on an AMD EPYC (Zen 5, "
                        "avx512_bf16, 2 vCPUs; batch 1000, torch 2.13): bf16 certifies ResNet-110 1.84x and "
                        "ResNet-20 1.68x as fast as fp32 (auto: bf16), the digits rRCM ViT 1.27x and LeNet-5 0.69x "
                        "(auto: fp32); the probes took 0.03-0.9 s. Details: benchmarks/README.md")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format (faster CNNs on CPU)")
    p.add_argument("--procedure", choices=PROCEDURES, default="cohen",
                   help="cohen (default): Cohen et al.'s CERTIFY with a fixed n; sequential: draw the estimation samples "
                        "in steps and stop as soon as an anytime-valid confidence sequence settles the decision at "
                        "--target-radius or at every radius of --radii (the log gains n_used, n0A and pA_upper)")
    p.add_argument("--target-radius", type=float, default=None,
                   help="sequential: decide robustness at this L2 radius, e.g. 2 * sigma")
    p.add_argument("--radii", type=_radii_argument, default=None,
                   help="sequential: settle every radius of this grid, a list 0,0.5,1 or a range start:stop:step such "
                        "as 0:1.5:0.25 (the radii a report will show)")
    p.add_argument("--step", type=int, default=SequentialCertify.step,
                   help=f"sequential: samples in the first step (default {SequentialCertify.step})")
    p.add_argument("--step-growth", type=float, default=SequentialCertify.growth, dest="growth",
                   help="sequential: each later step adds this fraction of the samples so far "
                        f"(default {SequentialCertify.growth:g})")
    p.add_argument("--futility-alpha", type=_optional_fraction, default=SequentialCertify.futility_alpha,
                   help="sequential: stop without certifying a radius once even the Clopper-Pearson upper bound at "
                        f"this level could not reach it within the budget (default {SequentialCertify.futility_alpha:g}; "
                        "'none' turns it off)")
    p.add_argument("--sequence", choices=SEQUENCES, default=SequentialCertify.sequence,
                   help="sequential: the confidence sequence, a Beta-mixture centred on the selection samples' "
                        "estimate (default) or the Krichevsky-Trofimov mixture")
    p.add_argument("--device", default="auto", help=DEVICE_CHOICES)
    p.add_argument("--ignore-class-names", action="store_true",
                   help="certify even if the data set's class names differ from those the checkpoint was trained on")
    p.add_argument("--out", required=True, help="log file to write (its settings go to <out>.json)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved settings as JSON and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run_certify)


def _radii_argument(text: str):
    from .smoothing.procedures import parse_radii

    try:
        return parse_radii(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _optional_fraction(text: str):
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1) or none, got {text!r}") from None


def run_certify(args) -> int:
    from dataclasses import fields

    from .certify import plan_certification
    from .smoothing.runner import CertifySettings

    settings = {f.name: getattr(args, f.name) for f in fields(CertifySettings) if f.name != "sigma"}
    plan = plan_certification(args.checkpoint, sigma=args.sigma, data=args.data, split=args.split,
                              data_root=args.data_root, ignore_class_names=args.ignore_class_names,
                              load=not args.dry_run, **settings)
    return _resolve_or_run(args, args.device, lambda: plan.describe(args.device),
                           lambda ctx: plan.run(args.out, ctx=ctx, progress=not args.quiet), "log")


# -- report ----------------------------------------------------------------------------------------
def add_report_parser(sub) -> None:
    from .report import TABLE_FORMATS

    p = sub.add_parser("report", help="tables and plots from certification logs",
                       description="Certified accuracy at chosen radii, ACR, clean accuracy, abstain rate and the "
                                   "best-over-σ envelope, from one or more logs.")
    p.add_argument("logs", nargs="+",
                   help="certification logs (Cohen's format; label with LABEL=PATH). LABEL=PATH1,PATH2,... makes "
                        "one row and curve: the envelope of those logs (e.g. one method's best over σ)")
    p.add_argument("--radii", default=None, help="comma-separated radii (default 0, 0.25, ... up to the largest radius)")
    p.add_argument("--format", default="text", choices=TABLE_FORMATS, help="table format")
    p.add_argument("--no-envelope", action="store_true", help="omit the best-over-σ envelope")
    p.add_argument("--every", type=int, default=1, metavar="K",
                   help="use only examples whose idx is a multiple of K: a log of the whole test set beside logs "
                        "certified with --skip K")
    p.add_argument("--plot", default=None, help="write a PNG plot of certified accuracy against radius")
    p.add_argument("--title", default=None, help="plot title")
    p.add_argument("--out", default=None, help="write the table to this file instead of stdout")
    p.set_defaults(run=run_report)


def run_report(args) -> int:
    from . import report
    from .certlog import every_kth, read_log
    from .fileio import write_json_atomic, write_text_atomic

    def read(path: str, label: str | None):
        log = read_log(path, label=label)
        return every_kth(log, args.every) if args.every != 1 else log

    logs, groups = [], []
    for item in args.logs:
        label, paths = (item.split("=", 1) if "=" in item and not Path(item).exists() else (None, item))
        if label is not None and "," in paths and not Path(paths).exists():
            groups.append((label, [read(path, f"{label} ({path})") for path in paths.split(",")]))
        else:
            logs.append(read(paths, label))
    if args.radii:
        try:
            radii = [float(r) for r in args.radii.split(",")]
        except ValueError:
            raise UserError(f"--radii must be comma-separated numbers, got {args.radii!r}") from None
    else:
        every_log = logs + [log for _, members in groups for log in members]
        radii = report.default_radii(max(float(log.radius.max(initial=0.0)) for log in every_log))
    text = report.build_report(logs, radii, fmt=args.format, envelope=not args.no_envelope, groups=groups)
    resolved = {"command": "report", "logs": [{"label": log.label, "path": str(log.path)} for log in logs],
                "envelopes": [{"label": label, "paths": [str(log.path) for log in members]}
                              for label, members in groups],
                "every": args.every, "radii": radii, "format": args.format, "envelope": not args.no_envelope}
    if args.out:
        write_text_atomic(args.out, text)
        write_json_atomic(f"{args.out}.json", resolved)
        print(f"table: {args.out}")
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    if args.plot:
        report.plot_certified_accuracy(logs, args.plot, title=args.title, envelope=not args.no_envelope,
                                       groups=groups)
        write_json_atomic(f"{args.plot}.json", resolved)
        print(f"plot: {args.plot}")
    return 0


# -- demo ------------------------------------------------------------------------------------------
def add_demo_parser(sub) -> None:
    from .distributed import DEVICE_CHOICES

    p = sub.add_parser("demo", help="the main job on the embedded digits data: train, certify, report",
                       description="On scikit-learn's digits (no download): train the Gaussian baseline at each σ, "
                                   "certify the test split, print the certified-accuracy table and write the plot.")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="a tiny run for smoke tests (seconds, meaningless numbers)")
    p.add_argument("--device", default="auto", help=DEVICE_CHOICES)
    p.add_argument("--dry-run", action="store_true", help="print the resolved plan as JSON and exit")
    p.set_defaults(run=run_demo)


def run_demo(args) -> int:
    from .demo import run_demo as demo

    return demo(args.out, quick=args.quick, device=args.device, dry_run=args.dry_run)


# -- bench -----------------------------------------------------------------------------------------
def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: inference cost per noise sample of base classifiers",
                       description="Benchmarks. `rrcm bench cost`: parameters, FLOPs and measured time per noise "
                                   "sample of each base classifier, and the cost of one certificate.")
    actions = p.add_subparsers(dest="action", metavar="<action>", parser_class=_Parser, required=True)
    c = actions.add_parser("cost", help="parameters, FLOPs and time per noise sample; DDS against rRCM",
                           description="Count parameters and FLOPs (one sample's forward, on the meta device) and "
                                       "time the forward of each base classifier, then the cost of one certificate "
                                       "at n0 + n samples. By default: the paper-scale networks at random weights "
                                       "(ImageNet and CIFAR-10 rRCM-B against DDS), counts only.")
    c.add_argument("--time-paper", action="store_true",
                   help="also time the paper-scale networks on this machine (minutes: the ADM UNet alone is ~10 s "
                        "per sample on 2 CPU cores)")
    c.add_argument("--no-paper", action="store_true", help="leave out the paper-scale networks")
    c.add_argument("--small", action="store_true",
                   help="the repository's small digits models at random weights (LeNet-5, rRCM, DDS if registered)")
    c.add_argument("--checkpoint", action="append", default=[], metavar="LABEL=PATH",
                   help="a checkpoint written by rrcm (repeatable): counted and timed at its input size")
    c.add_argument("--batch-size", type=int, default=8, help="samples per timed forward (default 8)")
    c.add_argument("--big-batch-size", type=int, default=1,
                   help="samples per timed forward for networks of >= 100 GMAC per sample (default 1)")
    c.add_argument("--precision", default="fp32,bf16", help="fp32, bf16 (CPU autocast) or both: fp32,bf16 (default)")
    c.add_argument("--device", default="cpu", help="where the timed forwards run: cpu (default), cuda or cuda:N")
    c.add_argument("--repeats", type=int, default=3, help="timed forwards per network and precision; the median counts")
    c.add_argument("--warmup", type=int, default=1, help="untimed forwards before timing (default 1)")
    c.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                   help="on a shared machine: wait up to this long for other processes to go idle before each "
                        "timed forward, and redo one that ran beside other work (up to 3 times)")
    c.add_argument("--n", "--N", type=int, default=100_000, dest="n", help="certificate: estimation samples (default 100000)")
    c.add_argument("--n0", "--N0", type=int, default=100, dest="n0", help="certificate: selection samples (default 100)")
    c.add_argument("--json", default=None, metavar="PATH", help="also write the full results as JSON")
    c.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    c.set_defaults(run=run_bench_cost)


def run_bench_cost(args) -> int:
    from .bench_cost import run_cost_command

    return run_cost_command(args)


# -- diffusion denoised smoothing (Carlini et al. 2023) ---------------------------------------------
DENOISER_FLAGS = {  # flag -> (DenoiserConfig field, type, help)
    "--data": ("data", str, "data set: {datasets}"),
    "--data-root": ("data_root", str, "folder holding the data set's files (not needed for digits)"),
    "--image-size": ("image_size", int, "imagefolder: resize + centre-crop side (default 224)"),
    "--size": ("size", str, "UNet size: {unet_sizes} (small: ~0.65M parameters, CPU; cifar: DDPM's CIFAR-10 "
                            "shape, narrower)"),
    "--epochs": ("epochs", int, "training epochs"),
    "--batch-size": ("batch_size", int, "global batch size"),
    "--lr": ("lr", float, "peak learning rate (AdamW; linear warm-up, then cosine decay)"),
    "--weight-decay": ("weight_decay", float, "AdamW weight decay (not on biases and norms; default 0)"),
    "--warmup-steps": ("warmup_steps", int, "linear warm-up steps"),
    "--grad-clip": ("grad_clip", float, "clip the gradient norm at this value (default 1)"),
    "--num-train-timesteps": ("num_train_timesteps", int, "diffusion steps T (default 1000)"),
    "--beta-start": ("beta_start", float, "first β of the schedule (default 1e-4)"),
    "--beta-end": ("beta_end", float, "last β of the schedule (default 0.02)"),
    "--beta-schedule": ("beta_schedule", str, "{beta_schedules} (default linear)"),
    "--seed": ("seed", int, "random seed"),
    "--device": ("device", str, "{devices}"),
    "--precision": ("precision", str, "{precisions} (autocast; fp16 with loss scaling)"),
    "--checkpoint-every": ("checkpoint_every", int, "epochs between resumable checkpoints"),
}


def add_train_denoiser_parser(sub) -> None:
    from .baselines.denoiser import DENOISER_PRESETS

    p = sub.add_parser("train-denoiser", help="train a DDPM denoiser for diffusion denoised smoothing",
                       description="Train a diffusers UNet2DModel as a standard DDPM ε-prediction model (linear betas "
                                   "1e-4..0.02 over 1000 steps by default) on a data set mapped to [-1, 1]. Writes "
                                   "denoiser.safetensors, config.json and metrics.csv to --out; re-running the same "
                                   f"command resumes. Built-in presets: {', '.join(DENOISER_PRESETS)}. "
                                   "--arch-option KEY=VALUE sets a UNet2DModel argument, e.g. "
                                   "block_out_channels=[64,128].")
    _add_flags(p, DENOISER_FLAGS)
    p.add_argument("--no-augment", action="store_true", help="no random flips (colour data sets only have them)")
    p.add_argument("--out", required=True, help="output folder (denoiser.safetensors, config.json, metrics.csv)")
    p.set_defaults(run=run_train_denoiser)


def run_train_denoiser(args) -> int:
    from .baselines.denoiser import DENOISER_PRESETS, DenoiserConfig, resolve_denoiser_config, train_denoiser

    base: dict[str, Any] = {}
    if args.preset in DENOISER_PRESETS:
        base, args.preset = dict(DENOISER_PRESETS[args.preset]), None
    values = _collect(args, DENOISER_FLAGS, base)
    if args.no_augment:
        values["augment"] = False
    cfg = DenoiserConfig.from_dict(values)
    return _resolve_or_run(args, cfg.device, lambda: resolve_denoiser_config(cfg),
                           lambda ctx: train_denoiser(cfg, args.out, progress=not args.quiet, ctx=ctx), "denoiser")


def add_dds_parser(sub) -> None:
    p = sub.add_parser("dds", help="diffusion denoised smoothing: assemble a denoiser + classifier base classifier",
                       description="Diffusion denoised smoothing (Carlini et al. 2023). `rrcm dds assemble` combines "
                                   "a DDPM denoiser and a classifier trained on clean data into one base classifier "
                                   "for smoothing σ; certify it with `rrcm certify --checkpoint ...` as any model.")
    actions = p.add_subparsers(dest="action", metavar="<action>", parser_class=_Parser, required=True)
    a = actions.add_parser("assemble", help="write a DDS base-classifier checkpoint for one σ",
                           description="Pick the denoising timestep t (the smallest whose noise level "
                                       "√((1−ᾱ_t)/ᾱ_t) is ≥ 2σ: the denoiser sees at least the real noise), check "
                                       "that denoiser and classifier were trained on the same data, and write a "
                                       "checkpoint (arch dds, σ recorded) that `rrcm certify` reads unchanged.")
    a.add_argument("--denoiser", default=None, help="denoiser.safetensors written by `rrcm train-denoiser`")
    a.add_argument("--pretrained-denoiser", default=None, metavar="NAME",
                   help="instead: a diffusers DDPM folder or hub id (UNet2DModel + DDPMScheduler; downloads need "
                        "network access; HF_HUB_OFFLINE=1 forbids them)")
    a.add_argument("--classifier", required=True,
                   help="model.safetensors of a classifier trained on clean data (`rrcm train --method clean`)")
    a.add_argument("--sigma", type=float, required=True, help="smoothing σ on [0, 1] pixels")
    a.add_argument("--steps", type=int, default=1,
                   help="denoising steps: 1 = one-step x̂0 (Carlini et al.); more = deterministic DDIM from t to 0")
    a.add_argument("--out", default=None, help="checkpoint to write, e.g. runs/dds-025/model.safetensors "
                                               "(its config also goes to <out>.json)")
    a.add_argument("--dry-run", action="store_true", help="print the checkpoint config as JSON and write nothing")
    a.set_defaults(run=run_dds_assemble)


def run_dds_assemble(args) -> int:
    from .baselines.dds import assemble_dds

    config = assemble_dds(args.classifier, args.sigma, args.out, denoiser=args.denoiser,
                          pretrained_denoiser=args.pretrained_denoiser, steps=args.steps, dry_run=args.dry_run)
    if args.dry_run:
        _print_json(config)
        return 0
    dds = config["dds"]
    print(f"DDS base classifier for σ = {config['sigma']}: denoising at t = {dds['timestep']} "
          f"(noise {dds['effective_sigma']:.4f} on [0, 1] pixels), {dds['steps']} step(s)")
    print(f"checkpoint: {args.out}")
    return 0


# -- entry point -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="rrcm", description="Certified L2 robustness by randomized smoothing: rRCM and baselines.")
    parser.add_argument("--version", action="version", version=f"rrcm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=_Parser)
    add_demo_parser(sub)
    add_train_parser(sub)
    add_pretrain_parser(sub)
    add_train_denoiser_parser(sub)
    add_dds_parser(sub)
    add_certify_parser(sub)
    add_report_parser(sub)
    add_bench_parser(sub)
    return parser


def reexec_with_malloc_tunables(command: Sequence[str]) -> None:
    """Replace this process by `command` (its argv, the program first) started with MALLOC_TUNABLES; a
    no-op off Linux, once GLIBC_TUNABLES is set (in the re-executed process: it runs on) or with
    RRCM_NO_REEXEC set. If the exec fails, this process runs on without them: slower, same results."""
    if sys.platform != "linux" or "GLIBC_TUNABLES" in os.environ or os.environ.get("RRCM_NO_REEXEC"):
        return
    env = dict(os.environ, GLIBC_TUNABLES=MALLOC_TUNABLES)
    try:
        os.execve(command[0], list(command), env)
    except OSError:
        pass


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"rrcm: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    from_command_line = argv is None
    if from_command_line:  # one plain line per warning, not Python's two-line source listing
        import warnings

        warnings.showwarning = _show_warning
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        # Only a real command-line start re-executes; a call from Python (tests) must not be replaced.
        if from_command_line and args.command in HEAVY_COMMANDS and not getattr(args, "dry_run", False):
            reexec_with_malloc_tunables([sys.executable, "-m", "rrcm", *argv])
        return int(args.run(args) or 0)
    except UserError as e:
        print(f"rrcm: error: {e}", file=sys.stderr)
        return UserError.exit_code
    except OSError as e:  # unreadable input, unwritable output, full disk... (rrcm's own writes raise UserError)
        from .fileio import describe_os_error

        print(f"rrcm: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rrcm: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
