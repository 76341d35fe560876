"""`rrcm demo`: the main job on the embedded digits data, end to end.

Gaussian augmentation (LeNet-5, one model per σ) beside rRCM (one contrastive-denoising pre-training,
then one fine-tuned time-conditioned ViT per σ). Both certify the same test images with the same
settings; the demo prints both certified-accuracy tables and writes one plot. Every step resumes
if interrupted.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .fileio import write_json_atomic, write_text_atomic

PRETRAIN_FOLDER = "rrcm-pretrain"  # under the demo's output folder: the encoder every rRCM run fine-tunes


@dataclass(frozen=True)
class DemoPlan:
    # σ = 1.0 drowns 8×8 digits (clean accuracy ~30%); the demo stays where the plot says something.
    sigmas: tuple[float, ...] = (0.12, 0.25, 0.5)
    # Gaussian augmentation
    arch: str = "lenet5"
    epochs: int = 60
    batch_size: int = 64
    lr: float = 0.05
    # rRCM: pre-training once, fine-tuning per σ
    rrcm_size: str = "digits"
    pretrain_steps: int = 400
    pretrain_batch_size: int = 256
    pretrain_lr: float = 1e-3
    finetune_epochs: int = 30
    finetune_lr: float = 2e-3
    layer_decay: float = 0.8
    lbd: float = 1.0
    # certification (both methods, the same subset)
    n0: int = 100
    n: int = 10_000
    alpha: float = 0.001
    certify_batch_size: int = 2_000
    skip: int = 5
    max_index: int = -1
    precision: str = "fp32"
    train_options: dict = field(default_factory=dict)


FULL = DemoPlan()
QUICK = DemoPlan(sigmas=(0.25, 0.5), epochs=2, pretrain_steps=6, pretrain_batch_size=64, finetune_epochs=1,
                 n0=20, n=200, certify_batch_size=200, skip=25)


def run_demo(out: str | Path, *, quick: bool = False, device: str = "auto", dry_run: bool = False) -> int:
    from .distributed import distributed

    plan = QUICK if quick else FULL
    out = Path(out)
    pretrain_cfg, runs = _configs(plan, out, device)
    resolved = {"command": "demo", "quick": quick, "plan": asdict(plan), "pretrain": pretrain_cfg.to_dict(),
                "runs": [{"method": method, "label": label, "folder": str(folder), "train": cfg.to_dict(),
                          "certify": asdict(s)} for method, label, folder, cfg, s in runs]}
    if dry_run:
        print(json.dumps(resolved, indent=2, sort_keys=True))
        return 0
    with distributed(device) as ctx:  # a device that does not exist fails here, before anything is written
        write_json_atomic(out / "demo.json", resolved)
        logs = _train_and_certify(plan, out, pretrain_cfg, runs, ctx=ctx, quick=quick)
    _report(plan, out, logs, quick=quick)
    return 0


def _configs(plan: DemoPlan, out: Path, device: str):
    """The pre-training config, and per σ and method (method, label, folder, training config, certify settings)."""
    from .smoothing.runner import CertifySettings
    from .train.config import TrainConfig
    from .train.pretrain import PretrainConfig

    pretrain_cfg = PretrainConfig(data="digits", arch_options={"size": plan.rrcm_size}, steps=plan.pretrain_steps,
                                  batch_size=plan.pretrain_batch_size, lr=plan.pretrain_lr,
                                  warmup_steps=max(1, plan.pretrain_steps // 20), projector_hidden=256,
                                  crop_scale_min=0.3, blur=False, log_every=max(1, plan.pretrain_steps // 20),
                                  checkpoint_every=max(1, plan.pretrain_steps // 4), device=device)
    encoder_path = out / PRETRAIN_FOLDER / "encoder.safetensors"
    runs = []
    for sigma in plan.sigmas:
        settings = CertifySettings(sigma=sigma, n0=plan.n0, n=plan.n, alpha=plan.alpha,
                                   batch_size=plan.certify_batch_size, skip=plan.skip, max_index=plan.max_index,
                                   precision=plan.precision)
        gaussian = TrainConfig(data="digits", arch=plan.arch, method="gaussian", sigma=sigma, epochs=plan.epochs,
                               batch_size=plan.batch_size, lr=plan.lr, device=device, **plan.train_options)
        rrcm = TrainConfig(data="digits", arch="rrcm_vit", method="consistency", sigma=sigma,
                           epochs=plan.finetune_epochs, batch_size=plan.batch_size, optimizer="adamw",
                           lr=plan.finetune_lr, weight_decay=0.05, layer_decay=plan.layer_decay, lbd=plan.lbd,
                           lr_schedule="epoch", pretrained=str(encoder_path), device=device)  # the authors': no clipping
        runs.append(("gaussian", f"gaussian σ={sigma}", out / f"gaussian-sigma{sigma}", gaussian, settings))
        runs.append(("rrcm", f"rRCM σ={sigma}", out / f"rrcm-sigma{sigma}", rrcm, settings))
    return pretrain_cfg, runs


def _train_and_certify(plan: DemoPlan, out: Path, pretrain_cfg, runs, *, ctx, quick: bool) -> dict[str, list]:
    """Pre-train, then train and certify each run; the certification logs by method."""
    from .certify import plan_certification
    from .certlog import read_log
    from .train.classifier import train_classifier
    from .train.pretrain import pretrain

    encoder_folder = out / PRETRAIN_FOLDER
    print(f"== rRCM: pre-train the encoder ({plan.pretrain_steps} steps)")
    pretrain(pretrain_cfg, encoder_folder, progress=False, ctx=ctx)
    _print_last_row(encoder_folder / "metrics.csv", "step")
    logs: dict[str, list] = {"gaussian": [], "rrcm": []}
    for method, label, folder, train_cfg, settings in runs:
        print(f"== {label}: train")
        checkpoint = train_classifier(train_cfg, folder, progress=False)
        _print_last_row(folder / "metrics.csv", "epoch")
        certification = plan_certification(checkpoint, data="digits", split="test", **asdict(settings))
        # the demo's logs have always recorded the data set without a root (digits needs none)
        certification = replace(certification, data_source={"name": "digits", "split": "test"})
        print(f"== {label}: certify {len(certification.indices)} test images, n={settings.n}")
        log_path = certification.run(folder / "certify.tsv", ctx=ctx, progress=not quick)
        logs[method].append(read_log(log_path, label=label))
    return logs


def _report(plan: DemoPlan, out: Path, logs: dict[str, list], *, quick: bool) -> None:
    """Both methods' certified-accuracy tables (text and markdown) and one plot."""
    from . import report

    radii = report.default_radii(1.0 if quick else 1.5)
    titles = {"gaussian": f"Gaussian augmentation ({plan.arch})", "rrcm": f"rRCM (ViT, size {plan.rrcm_size})"}
    text = "\n".join(f"{titles[m]}\n{report.build_report(logs[m], radii, fmt='text', envelope=True)}" for m in logs)
    markdown = "\n".join(f"**{titles[m]}**\n\n{report.build_report(logs[m], radii, fmt='markdown', envelope=True)}"
                         for m in logs)
    write_text_atomic(out / "report.txt", text)
    write_text_atomic(out / "report.md", markdown)
    plot = out / "certified_accuracy.png"
    report.plot_certified_accuracy(logs["gaussian"] + logs["rrcm"], plot, envelope=False,
                                   title="digits: rRCM vs Gaussian augmentation")
    print(text)
    print(f"table: {out / 'report.txt'}\nplot: {plot}")


def _print_last_row(metrics: Path, unit: str) -> None:
    if not metrics.exists():
        return
    with open(metrics) as f:
        rows = list(csv.DictReader(f))
    if rows:
        last = rows[-1]
        extra = (f", noisy train accuracy {float(last['noisy_train_accuracy']):.3f}"
                 if "noisy_train_accuracy" in last else "")
        print(f"   {unit} {last[unit]}: loss {float(last['loss']):.3f}{extra}")
