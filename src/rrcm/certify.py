"""Certify a checkpoint on a data set: what may be certified, with which σ, on which examples.

`plan_certification` holds the policy between a caller (`rrcm certify`, `rrcm demo`, a script) and the
runner (`rrcm.smoothing.runner.certify_dataset`): it reads and vets the checkpoint, settles σ (warning when
a σ-conditioned model is certified at another σ), checks the settings, finds the data set and checks that
it fits the checkpoint, all before any model is loaded or file written. The plan it returns describes
itself (`describe`, what `--dry-run` prints) and runs (`run`).

    from rrcm.certify import plan_certification
    from rrcm.distributed import distributed

    plan = plan_certification("runs/g025/model.safetensors", n=10_000, skip=20)  # σ, data: the checkpoint's
    with distributed("auto") as ctx:  # one process, or every process torchrun started
        log = plan.run("runs/g025/certify.tsv", ctx=ctx)
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .smoothing.precision import AUTO, CONCRETE
from .smoothing.runner import CertifySettings, certify_dataset, select_indices

PRECISIONS = (AUTO, *CONCRETE)  # what `rrcm certify --precision` takes
# Archs whose model is told the noise level (rRCM's time conditioning) or built for it (DDS's timestep).
SIGMA_CONDITIONED = {"rrcm_vit": "fine-tune a model", "dds": "assemble a DDS model"}


@dataclass(frozen=True)
class CertificationPlan:
    """A vetted certification: `run` it, or `describe` it. `dataset` is None when the plan was made with
    `load=False` (a dry run: the data set was probed, no image decoded)."""

    checkpoint: str | os.PathLike
    checkpoint_config: dict[str, Any]
    settings: CertifySettings
    data_source: dict[str, Any]  # recorded in <log>.json: data set name, split, root
    info: Any  # rrcm.data.DataInfo
    num_examples: int
    dataset: Any = None  # rrcm.data.ImageDataset

    @property
    def indices(self) -> list[int]:
        """The examples the run certifies (Cohen's subset of the split)."""
        return select_indices(self.num_examples, self.settings.skip, self.settings.max_index)

    def describe(self, device: str = "auto") -> dict[str, Any]:
        """The resolved settings, as `rrcm certify --dry-run` prints them; times nothing."""
        from .smoothing.precision import describe_dry_run

        return {"settings": asdict(self.settings), "checkpoint": os.fspath(self.checkpoint),
                "data": self.info.to_dict(), "precision_auto": describe_dry_run(self.settings.precision, device),
                "split": self.data_source["split"], "examples": len(self.indices)}

    def run(self, log_path: str | os.PathLike, *, ctx, progress: bool = True) -> Path:
        """Load the model onto `ctx.device` and certify; returns the merged log's path."""
        from .checkpoint import load_checkpoint

        if self.dataset is None:
            raise ValueError("this plan was made with load=False (to describe it); plan again to run it")
        model, _ = load_checkpoint(self.checkpoint, device=ctx.device)
        return certify_dataset(model, self.dataset, self.settings, log_path, ctx=ctx, checkpoint_path=self.checkpoint,
                               data_source=self.data_source, progress=progress)


def plan_certification(checkpoint: str | os.PathLike, *, sigma: float | None = None, data: str | None = None,
                       split: str = "test", data_root: str | os.PathLike | None = None,
                       ignore_class_names: bool = False, load: bool = True, **settings: Any) -> CertificationPlan:
    """Vet a certification of `checkpoint` and resolve what it leaves open; raises UserError for a mistake.

    `sigma` and `data` default to the checkpoint's own; `settings` are the other fields of CertifySettings
    (n0, n, alpha, batch_size, seed, skip, max_index, precision, procedure, ...). `load=False` probes the
    data set instead of loading it (a dry run: paths, headers and sizes are checked, no image decoded).
    """
    from .checkpoint import read_checkpoint_config

    ckpt_config = read_checkpoint_config(checkpoint)
    check_certifiable(ckpt_config, checkpoint)
    certify_settings = CertifySettings(sigma=smoothing_sigma(ckpt_config, sigma), **settings)
    certify_settings.validate()
    if certify_settings.precision not in PRECISIONS:
        raise UserError(f"unknown precision {certify_settings.precision!r}; "
                        f"choose {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}")
    data_name = data or ckpt_config.get("data", {}).get("name")
    if data_name is None:
        raise UserError("the checkpoint records no data set; give --data")
    info, num_examples, dataset = _open_data(ckpt_config, data_name, split, data_root, load=load)
    check_fits_data(ckpt_config, info, checkpoint, ignore_class_names=ignore_class_names)
    return CertificationPlan(checkpoint, ckpt_config, certify_settings,
                             {"name": data_name, "split": split, "root": data_root}, info, num_examples, dataset)


def check_certifiable(ckpt_config: dict[str, Any], checkpoint: str | os.PathLike) -> None:
    """Only classifiers are certified: an encoder or a denoiser is one step short of one."""
    if ckpt_config.get("kind") == "rrcm_encoder":
        raise UserError(f"{checkpoint} is a pre-trained rRCM encoder, not a classifier; fine-tune it first "
                        "(`rrcm finetune --pretrained ...`) and certify the fine-tuned model")
    if ckpt_config.get("kind") == "denoiser":
        raise UserError(f"{checkpoint} is a denoiser, not a classifier; combine it with a classifier "
                        "(`rrcm dds assemble ...`) and certify the assembled model")


def smoothing_sigma(ckpt_config: dict[str, Any], sigma: float | None) -> float:
    """The σ to certify at: `sigma`, else the checkpoint's. Warns when a model conditioned on its training σ
    is certified at another: still a sound certificate for that σ, but the model is told (or denoises) the
    wrong noise level."""
    trained_sigma = ckpt_config.get("sigma")
    sigma = sigma if sigma is not None else trained_sigma
    if sigma is None:
        raise UserError("the checkpoint records no σ; give --sigma")
    remedy = SIGMA_CONDITIONED.get(ckpt_config["model"].get("arch"))
    if remedy and trained_sigma and sigma != trained_sigma:
        warnings.warn(f"this model is conditioned on σ = {trained_sigma} but certification uses σ = {sigma}; "
                      f"{remedy} for σ = {sigma} for meaningful results")
    return sigma


def check_fits_data(ckpt_config: dict[str, Any], info, checkpoint: str | os.PathLike, *,
                    ignore_class_names: bool = False) -> None:
    """Channels, image size, class count and (unless ignored) class names must be the checkpoint's."""
    from .compatibility import check_checkpoint_matches_data, check_class_names, recorded_class_names

    check_checkpoint_matches_data(ckpt_config, info, checkpoint)
    if not ignore_class_names:
        check_class_names(recorded_class_names(ckpt_config), info.classes, checkpoint)


def _open_data(ckpt_config: dict[str, Any], name: str, split: str, root, *, load: bool):
    """(info, number of examples, dataset or None). ImageFolder images are resized to the size the model was
    trained at; the fixed-size sets are checked against theirs."""
    from .data import load_dataset, probe_dataset

    image_size = ckpt_config["model"].get("image_size") if name == "imagefolder" else None
    if not load:  # checks paths, headers and sizes and counts the examples, but decodes no image
        info, num_examples = probe_dataset(name, split, root, image_size=image_size)
        return info, num_examples, None
    dataset = load_dataset(name, split, root, image_size=image_size)
    return dataset.info, len(dataset), dataset
