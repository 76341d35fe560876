"""Certify a data set: one certificate per example, one log row per example, resumable and shardable.

The procedure (rrcm.smoothing.procedures: Cohen's CERTIFY by default, or the sequential one) decides what
is sampled and concluded; this module only selects the examples, resumes, shards and merges. Cohen's runs
certify one example at a time, as they always have; sequential runs pack the samples of several pending
examples into each forward batch (`Smooth.run_packed`), since their small steps would waste a batch.

Rows go to per-process part files (`<log>.part-rank<r>`) as they finish, flushed and synced, so an
interrupted run loses at most the example in flight. Re-running the same command reads every part file,
skips the indices already done and certifies the rest, whatever the number of processes now. When every
index is done the parts are merged, sorted by idx, into `<log>` (written atomically) beside
`<log>.json`, the resolved settings. Noise depends only on (seed, idx), so the merged log is the same
whatever the batch size, process count or resume point.
"""

from __future__ import annotations

import datetime
import glob
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm import tqdm

from .. import __version__
from ..certlog import LOG_COLUMNS, SEQUENTIAL_COLUMNS, format_row, header_line, read_log
from ..distributed import DistContext, barrier
from ..errors import UserError
from ..fileio import atomic_path, output_error, write_json_atomic
from .noise import SELECTION
from .precision import resolve_run_precision
from .procedures import CohenCertify, SequentialCertify
from .smooth import Smooth

PART_SUFFIX = ".part-rank"
PROCEDURES = ("cohen", "sequential")  # CertifySettings.procedure: CohenCertify or SequentialCertify


@dataclass(frozen=True)
class CertifySettings:
    sigma: float
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    batch_size: int = 1000
    seed: int = 0
    skip: int = 1
    max_index: int = -1  # Cohen's --max: stop at this dataset index (−1: no limit)
    precision: str = "fp32"
    channels_last: bool = False
    procedure: str = "cohen"  # or "sequential": then n is the budget, and the settings below apply
    target_radius: float | None = None
    radii: tuple[float, ...] | None = None
    step: int = SequentialCertify.step  # the procedure's own defaults
    growth: float = SequentialCertify.growth
    futility_alpha: float | None = SequentialCertify.futility_alpha
    sequence: str = SequentialCertify.sequence

    def certification_procedure(self) -> CohenCertify | SequentialCertify:
        if self.procedure == "cohen":
            return CohenCertify(self.n0, self.n, self.alpha)
        if self.procedure == "sequential":
            radii = None if self.radii is None else tuple(sorted(set(self.radii)))
            return SequentialCertify(self.n0, self.n, self.alpha, target_radius=self.target_radius, radii=radii,
                                     step=self.step, growth=self.growth, futility_alpha=self.futility_alpha,
                                     sequence=self.sequence)
        raise UserError(f"unknown certification procedure {self.procedure!r}; choose {' or '.join(PROCEDURES)}")

    def log_columns(self) -> tuple[str, ...]:
        return SEQUENTIAL_COLUMNS if self.procedure == "sequential" else LOG_COLUMNS

    def validate(self) -> None:
        procedure = self.certification_procedure()
        if self.procedure == "cohen" and (self.target_radius is not None or self.radii is not None):
            raise UserError("--target-radius and --radii belong to --procedure sequential; Cohen's CERTIFY "
                            "certifies whatever radius its n samples give")
        procedure.validate(self.sigma)
        if self.batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {self.batch_size}")
        if self.skip < 1:
            raise UserError(f"--skip must be at least 1, got {self.skip}")
        if self.max_index == 0 or self.max_index < -1:
            raise UserError(f"--max-index must be a positive index bound or -1 (no bound), got {self.max_index}")


# Settings that change the log's numbers; a resumed run must agree on all of them (and on the sequential
# ones when the procedure is sequential). Logs written before procedures existed were Cohen's.
RESULT_KEYS = ("sigma", "n0", "n", "alpha", "seed", "skip", "max_index", "precision", "procedure")
SEQUENTIAL_RESULT_KEYS = ("target_radius", "radii", "step", "growth", "futility_alpha", "sequence")
_DEFAULTS = {"procedure": "cohen"}


def select_indices(num_examples: int, skip: int, max_index: int) -> list[int]:
    """Cohen et al.'s subset: every `skip`-th index, stopping at index `max_index` (−1: none)."""
    stop = num_examples if max_index < 0 else min(num_examples, max_index)
    return list(range(0, stop, skip))


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def part_paths(log_path: Path) -> list[Path]:
    paths = sorted(Path(p) for p in glob.glob(glob.escape(str(log_path)) + PART_SUFFIX + "*"))
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path} is not a file, but rrcm keeps a part of the log {log_path.name} there; remove "
                            "it or choose another --out")
    return paths


def _repair_torn_line(path: Path) -> None:
    """Cut a last line that an interrupted writer left without its newline, and blank lines at the end (rows
    appended after them would make the part file unreadable). A complete part file is left untouched."""
    data = path.read_bytes()
    kept = data if data.endswith(b"\n") else data[: data.rfind(b"\n") + 1]
    if kept.strip():
        kept = kept.rstrip(b" \t\r\n") + b"\n"
    if kept != data:
        path.write_bytes(kept)


def _done_indices(log_path: Path) -> set[int]:
    done: set[int] = set()
    for part in part_paths(log_path):
        if part.stat().st_size == 0:
            continue
        done.update(int(i) for i in read_log(part, allow_partial_last_line=True).idx)
    return done


def _check_resumable(run_config_path: Path, run_config: dict[str, Any]) -> None:
    """A previous run's settings must match on everything that changes the numbers."""
    if not run_config_path.exists():
        return
    try:
        previous = json.loads(run_config_path.read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError(f"cannot read {run_config_path}; delete it and the log's part files to start over") from None
    before, now = previous.get("settings", {}), run_config["settings"]
    keys = RESULT_KEYS + (SEQUENTIAL_RESULT_KEYS if now["procedure"] == "sequential" else ())
    mismatched = [k for k in keys if before.get(k, _DEFAULTS.get(k)) != now[k]]
    if previous.get("checkpoint_sha256") != run_config["checkpoint_sha256"]:
        mismatched.append("checkpoint")
    if previous.get("data") != run_config["data"]:
        mismatched.append("data")
    if mismatched:
        raise UserError(f"{run_config_path.with_suffix('')} was started with different {', '.join(mismatched)}; "
                        "resume with the same settings, or write to another --out")


def complete_log_exists(log_path: Path, run_config_path: Path, run_config: dict[str, Any],
                        indices: Sequence[int]) -> bool:
    """True when `log_path` is this very run, finished; False when there is nothing there yet (or only
    part files to resume). Anything else standing at the output path is an error and is left untouched:
    a log counts as complete only when its `.json` records the same settings, checkpoint and data, says it
    is complete, and the log holds exactly the selected rows.
    """
    if log_path.is_dir():
        raise UserError(f"--out {log_path} is a folder; give a file name for the log, e.g. {log_path}/certify.tsv")
    if run_config_path.is_dir():
        raise UserError(f"{run_config_path} is a folder, but rrcm keeps the log's settings there; "
                        "remove it or choose another --out")
    if not log_path.exists():
        return False
    if not run_config_path.is_file():
        raise UserError(f"{log_path} already exists but has no {run_config_path.name} beside it, so it is not a "
                        "certification log of this run; remove it or choose another --out")
    _check_resumable(run_config_path, run_config)
    if part_paths(log_path):
        return False  # interrupted between merge and clean-up: the resume path re-merges
    previous = json.loads(run_config_path.read_text())
    if previous.get("complete") is not True:
        raise UserError(f"{log_path} exists but {run_config_path.name} does not mark it complete; remove both "
                        "and re-run to certify again, or choose another --out")
    try:
        logged = [int(i) for i in read_log(log_path).idx]
    except UserError as e:
        raise UserError(f"{log_path} exists but cannot be read back ({e}); remove it or choose another --out") from None
    if logged != list(indices):
        raise UserError(f"{log_path} holds {len(logged)} rows but this run selects {len(indices)} examples; "
                        "remove it or choose another --out")
    return True


def certify_dataset(model: torch.nn.Module, dataset, settings: CertifySettings, log_path: str | os.PathLike, *,
                    ctx: DistContext, checkpoint_path: str | os.PathLike | None = None,
                    data_source: dict[str, Any] | None = None, progress: bool = True) -> Path:
    """Certify `dataset[i]` for the selected indices and write the merged log; returns its path."""
    settings.validate()
    procedure = settings.certification_procedure()
    log_path = Path(log_path)
    run_config_path = log_path.with_name(log_path.name + ".json")
    indices = select_indices(len(dataset), settings.skip, settings.max_index)
    # `auto` becomes a concrete precision once and is recorded below; a resume reuses the recorded one.
    precision = resolve_run_precision(settings.precision, model, dataset, indices, batch_size=settings.batch_size,
                                      channels_last=settings.channels_last, run_config_path=run_config_path, ctx=ctx)
    requested_precision, settings = settings.precision, replace(settings, precision=precision.precision)
    run_config = _run_config(settings, procedure, {"requested": requested_precision, **precision.to_dict()},
                             dataset, indices, ctx=ctx, log_path=log_path, checkpoint_path=checkpoint_path,
                             data_source=data_source)
    if complete_log_exists(log_path, run_config_path, run_config, indices):
        if ctx.is_main:
            print(f"{log_path} is already complete ({len(indices)} examples); nothing to do")
        return log_path

    smoothed = _smoothed_classifier(model, dataset, indices, settings, ctx)
    done = _start_or_resume(log_path, run_config_path, run_config, ctx)
    remaining = [i for i in indices if i not in done]
    bar = tqdm(total=len(remaining), initial=0, desc=f"certify σ={settings.sigma}", unit="img",
               disable=not (progress and ctx.is_main), dynamic_ncols=True)
    if ctx.is_main and done:
        bar.write(f"resuming: {len(done)} of {len(indices)} examples already certified")
    _certify_share(smoothed, procedure, dataset, remaining, settings, log_path, ctx=ctx, bar=bar)
    bar.close()
    barrier(ctx)
    if ctx.is_main:
        _merge_parts(log_path, indices, settings.log_columns())
        run_config["complete"] = True
        run_config["finished_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
        write_json_atomic(run_config_path, run_config)
    barrier(ctx)
    return log_path


def _run_config(settings: CertifySettings, procedure, precision_choice: dict[str, Any], dataset,
                indices: Sequence[int], *, ctx: DistContext, log_path: Path,
                checkpoint_path: str | os.PathLike | None, data_source: dict[str, Any] | None) -> dict[str, Any]:
    """What `<log>.json` records: the settings as they read back, and where the numbers came from."""
    return {
        "command": "certify",
        "rrcm_version": __version__,
        "torch_version": torch.__version__,
        "settings": json.loads(json.dumps(asdict(settings))),  # as it reads back (radii: a list)
        "precision_choice": precision_choice,
        "checkpoint": str(checkpoint_path) if checkpoint_path else None,
        "checkpoint_sha256": file_sha256(checkpoint_path) if checkpoint_path else None,
        "data": {**dataset.info.to_dict(), **(data_source or {})},
        "subset": {"rule": "every skip-th index below max_index (Cohen et al.)", "count": len(indices),
                   "first": indices[:5], "last": indices[-1] if indices else None},
        "procedure": procedure.settings(),
        "max_radius": procedure.max_radius(settings.sigma),
        "device": str(ctx.device),
        "world_size": ctx.world_size,
        "log": str(log_path),
        "complete": False,
    }


def _smoothed_classifier(model: torch.nn.Module, dataset, indices: Sequence[int], settings: CertifySettings,
                         ctx: DistContext) -> Smooth:
    """The smoothed classifier on `ctx.device`, tried on one small batch before anything is written: a
    model with the wrong output shape or NaN outputs fails here, leaving no files behind."""
    model = model.to(ctx.device).eval()
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    smoothed = Smooth(model, dataset.info.num_classes, settings.sigma, seed=settings.seed,
                      precision=settings.precision, channels_last=settings.channels_last)
    if indices:
        x0, _ = dataset[indices[0]]
        try:
            smoothed.sample_counts(x0.to(ctx.device), min(settings.n0, settings.batch_size), settings.batch_size,
                                   idx=indices[0], stage=SELECTION)
        except RuntimeError as e:
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"the model fails on this data ({first_line[:200]}); certify it on the data it was "
                            "trained for") from None
    return smoothed


def _start_or_resume(log_path: Path, run_config_path: Path, run_config: dict[str, Any], ctx: DistContext) -> set[int]:
    """Rank 0 checks an earlier run's settings, mends its part files and records this run's settings; then
    every process reads the indices already certified. Returns them."""
    if ctx.is_main:
        _check_resumable(run_config_path, run_config)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        for part in part_paths(log_path):
            _repair_torn_line(part)
        write_json_atomic(run_config_path, run_config)
    barrier(ctx)
    done = _done_indices(log_path)
    barrier(ctx)  # nobody writes before everybody has read
    return done


def _certify_share(smoothed: Smooth, procedure, dataset, remaining: Sequence[int], settings: CertifySettings,
                   log_path: Path, *, ctx: DistContext, bar: tqdm) -> None:
    """Certify this process's share of `remaining`, one row appended to its part file per certificate."""
    mine = remaining[ctx.rank :: ctx.world_size]
    part_path = Path(f"{log_path}{PART_SUFFIX}{ctx.rank}")
    new_file = not part_path.exists() or part_path.stat().st_size == 0
    columns = settings.log_columns()
    started = time.perf_counter()
    samples_drawn = 0
    labels: dict[int, int] = {}

    def examples():
        for i in mine:
            x, label = dataset[i]
            labels[i] = int(label)
            yield i, x.to(ctx.device)

    try:
        out = open(part_path, "a", encoding="utf-8")
    except OSError as e:
        raise output_error("write", part_path, e) from None
    with out:
        if new_file:
            _append(out, header_line(columns), part_path)
        for count, (i, cert, seconds) in enumerate(_certificates(smoothed, procedure, examples(), settings), start=1):
            _append(out, format_row(_log_row(i, labels.pop(i), cert, seconds, settings), columns), part_path)
            samples_drawn += settings.n0 + cert.samples_used
            # Every process advances the shared bar by its world size: an estimate, shown by rank 0.
            bar.update(min(ctx.world_size, len(remaining) - bar.n))
            elapsed = time.perf_counter() - started
            bar.set_postfix_str(f"{60 * count / elapsed:,.1f} certificates/min, {samples_drawn / count:,.0f} "
                                f"samples each, {samples_drawn / elapsed:,.0f} samples/s"
                                + (" (this process)" if ctx.enabled else ""))


def _append(out, text: str, path: Path) -> None:
    """Write, flush and sync one line, so an interruption loses at most the examples in flight."""
    try:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    except OSError as e:  # a full disk, a removed folder...: say which file
        raise output_error("write", path, e) from None


def _log_row(i: int, label: int, cert, seconds: float, settings: CertifySettings) -> dict[str, Any]:
    row = {"idx": i, "label": label, "predict": cert.prediction, "radius": cert.radius,
           "correct": int(cert.prediction == label), "time": seconds, "cA": cert.selected,
           "nA": cert.count_selected, "n0": settings.n0, "n": settings.n, "sigma": settings.sigma,
           "alpha": settings.alpha, "seed": settings.seed, "pA_lower": cert.p_lower}
    if settings.procedure == "sequential":
        row.update(n_used=cert.samples_used, n0A=cert.count_selection, pA_upper=cert.p_upper)
    return row


def _certificates(smoothed: Smooth, procedure, examples, settings: CertifySettings):
    """(idx, certificate, seconds) for each example, in the order they finish."""
    if isinstance(procedure, CohenCertify):
        # one example at a time, as always: its n samples fill every batch by themselves
        for i, x in examples:
            t0 = time.perf_counter()
            cert = smoothed.run(procedure, x, settings.batch_size, idx=i)
            yield i, cert, time.perf_counter() - t0
    else:
        yield from smoothed.run_packed(procedure, examples, settings.batch_size)


def _merge_parts(log_path: Path, indices: Sequence[int], columns: Sequence[str] = LOG_COLUMNS) -> None:
    """Merge the part files into `log_path` sorted by idx; refuse if any index is missing or doubled."""
    rows: dict[int, str] = {}
    for part in part_paths(log_path):
        lines = part.read_text(encoding="utf-8").split("\n")  # as read_log splits them
        for line in lines[1:]:
            if not line.strip():
                continue  # the end of the file, or blank lines read_log tolerates there
            line += "\n"
            i = int(line.split("\t", 1)[0])
            if i in rows:
                raise UserError(f"index {i} was certified twice in {log_path}'s part files; delete them to start over")
            rows[i] = line
    missing = sorted(set(indices) - rows.keys())
    if missing:
        raise UserError(f"{len(missing)} examples are missing from {log_path}'s part files (first: {missing[0]}); "
                        "re-run the same command to finish them")
    with atomic_path(log_path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(header_line(columns))
            f.writelines(rows[i] for i in sorted(rows))
    for part in part_paths(log_path):
        part.unlink()
