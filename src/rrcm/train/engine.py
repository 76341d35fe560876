"""The one training loop: classifier training (every objective), rRCM pre-training and denoiser training
are tasks it runs.

A task (`Task`) builds its model, gives its parameter groups, computes one step's loss and metric
sums, and exports its final artefact. The engine does everything else, once for every task:
  - refuses to train a finished run again with other settings, and to resume an interrupted one with
    other settings;
  - seeds: the initial weights from (seed, 0), the example order of each pass over the data from
    (seed, 3, pass), a step's global RNG (dropout) from (seed, 21, step, rank); a task draws the rest of a
    step's randomness from `StepContext.generator(stream)`, keyed by (seed, stream, step, rank). A resumed
    run therefore follows the uninterrupted one exactly, with no generator state to save;
  - splits each global batch over the processes in rank order, sets the learning rate (linear warm-up,
    cosine decay, times each group's `lr_scale`), autocasts, scales an fp16 loss, synchronises gradients
    (DistributedDataParallel, or one explicit all-reduce for tasks whose collectives would interleave with
    DDP's), clips them and steps the optimizer;
  - keeps the metrics as sums on the device and reads them once per metrics row (all-reduced over the
    processes), so that no step waits on the host; a non-finite loss is noticed there too, before any
    state is saved;
  - writes config.json with the first state, metrics.csv and TensorBoard (when installed) with every row,
    the resumable train_state.safetensors every `checkpoint_every` steps, and finally the task's export.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .. import arithmetic
from ..checkpoint import load_state, read_checkpoint_config, save_state
from ..distributed import DistContext
from ..errors import UserError
from ..fileio import check_output_folder, write_json_atomic
from ..smoothing.noise import derive_seed
from .contrastive import average_gradients
from .outputs import CONFIG_FILE, check_resumable, write_metrics
from .schedule import epoch_warmup_cosine, warmup_cosine

STATE_FILE = "train_state.safetensors"
PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULES = ("step", "epoch")
ORDER_STREAM, DROPOUT_STREAM = 3, 21  # the engine's own generator streams; tasks use others


def check_precision(precision: str) -> None:
    """The training precisions every task takes (fp16 with loss scaling)."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")


def seeded_generator(*keys: int, device: torch.device | str = "cpu") -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(*keys))
    return generator


@dataclass(frozen=True)
class EngineSettings:
    seed: int
    total_steps: int
    batch_size: int  # global: examples per step over all processes
    drop_last: bool  # a pass over the data leaves out its last partial batch
    lr: float
    warmup_steps: int
    log_every: int  # steps per metrics row
    checkpoint_every: int  # steps between resumable states
    optimizer: str = "adamw"
    momentum: float = 0.0  # sgd only (Nesterov when > 0)
    grad_clip: float | None = None
    clip_from_step: int = 0  # no clipping before this step (the rRCM authors clip only after warm-up)
    precision: str = "fp32"
    gradient_sync: str = "ddp"  # "ddp" | "all_reduce"
    # "step": warm-up and cosine per step; "epoch": the rRCM authors' fine-tuning, the rate set once per
    # pass over the data (warm-up and length in passes: warmup_steps and total_steps over the pass length)
    lr_schedule: str = "step"


@dataclass(frozen=True)
class StepContext:
    """What a task's step may depend on: its step number, its process and the run's seed."""

    step: int
    rank: int
    seed: int
    device: torch.device

    def generator(self, stream: int, *, device: torch.device | str = "cpu", per_rank: bool = True) -> torch.Generator:
        """A generator of its own for this step; `per_rank=False` gives every process the same draws."""
        keys = (self.seed, stream, self.step, self.rank) if per_rank else (self.seed, stream, self.step)
        return seeded_generator(*keys, device=device)


@dataclass
class StepOutput:
    loss: torch.Tensor
    sums: dict[str, torch.Tensor]  # per-example metric values summed over the local examples (on the device)
    count: int  # the local examples


class Task:
    """What the engine needs of a task. Subclasses set the attributes and implement `build`,
    `parameter_groups`, `describe`, `step` and `export`; the two other hooks default to doing nothing."""

    what: str  # "training", "pre-training", ...: names the run in messages
    settings_key: str  # the key of config.json (and of the final checkpoint's config) holding the settings
    final_file: str
    metric_columns: tuple[str, ...]  # of metrics.csv; "epoch", "step", "lr" and "seconds" the engine fills
    run_config: dict[str, Any]
    settings: EngineSettings
    num_examples: int

    def build(self, ctx: DistContext) -> torch.nn.Module:  # on ctx.device
        raise NotImplementedError

    def parameter_groups(self, model: torch.nn.Module) -> list[dict]:
        raise NotImplementedError

    def describe(self, model: torch.nn.Module, device: torch.device) -> str:
        raise NotImplementedError

    def step(self, model: torch.nn.Module, forward: torch.nn.Module, indices: torch.Tensor,
             ctx: StepContext) -> StepOutput:
        raise NotImplementedError

    def export(self, model: torch.nn.Module, path: Path) -> None:
        raise NotImplementedError

    def after_optimizer_step(self, model: torch.nn.Module, step: int) -> None:
        pass

    def row_values(self, step: int) -> dict[str, Any]:
        return {}


def steps_per_epoch(num_examples: int, batch_size: int, drop_last: bool) -> int:
    return max(1, num_examples // batch_size) if drop_last else math.ceil(num_examples / batch_size)


def make_optimizer(settings: EngineSettings, groups: list[dict]) -> torch.optim.Optimizer:
    if settings.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum, nesterov=settings.momentum > 0)
    return torch.optim.AdamW(groups, lr=settings.lr)


@dataclass
class _Window:
    """The running sums of one metrics row, on the device; they travel in the training state, so that a
    resumed run writes the same rows. `seconds` counts training time only."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    count: int = 0
    seconds: float = 0.0

    def add(self, out: StepOutput) -> None:
        for name, value in out.sums.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.count += out.count

    def to_state(self, extra_seconds: float) -> dict[str, Any]:
        return {"sums": dict(self.sums), "count": self.count, "seconds": self.seconds + extra_seconds}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None, device: torch.device) -> "_Window":
        if not state or "sums" not in state:  # a state saved between rows by an older rrcm: start the row anew
            return cls()
        return cls({k: v.to(device) for k, v in state["sums"].items()}, state["count"], state["seconds"])


class _Divergence:
    """Remembers the first non-finite loss on the device; `check` reads it (once per row, before any save)."""

    def __init__(self, device: torch.device):
        self.seen = torch.zeros((), dtype=torch.bool, device=device)
        self.step = torch.zeros((), dtype=torch.long, device=device)
        self.loss = torch.zeros((), device=device)

    def observe(self, loss: torch.Tensor, step: int) -> None:
        bad = ~torch.isfinite(loss.detach())
        first = bad & ~self.seen
        self.step = torch.where(first, torch.full_like(self.step, step), self.step)
        self.loss = torch.where(first, loss.detach().float(), self.loss)
        self.seen = self.seen | bad

    def check(self, what: str) -> None:
        if bool(self.seen):
            raise UserError(f"{what} diverged (loss {float(self.loss)} at step {int(self.step)}); lower --lr")


class _Run:
    """One invocation of the engine on one task: the state it builds, resumes and saves."""

    def __init__(self, task: Task, out_dir: Path, ctx: DistContext):
        self.task, self.out_dir, self.ctx, self.s = task, out_dir, ctx, task.settings
        self.state_path = out_dir / STATE_FILE
        torch.manual_seed(derive_seed(self.s.seed, 0))  # identical initial weights on every process
        self.model = task.build(ctx)
        if ctx.enabled and self.s.gradient_sync == "all_reduce":  # the seed makes the starts equal; this ensures it
            for tensor in self.model.state_dict().values():
                torch.distributed.broadcast(tensor, 0)
        self.optimizer = make_optimizer(self.s, task.parameter_groups(self.model))
        self.forward = self.model
        if ctx.enabled and self.s.gradient_sync == "ddp":
            device = ctx.device
            self.forward = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        # fp16 needs loss scaling; its scale is part of the resumable state
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=self.s.precision == "fp16")
        self.step, self.rows, window = 0, [], None
        if self.state_path.exists():
            state = load_state(self.state_path)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.step, self.rows, window = state["step"], state["metrics"], state.get("window")
            if ctx.is_main:
                print(f"resuming {out_dir} at step {self.step} of {self.s.total_steps}")
        self.window = _Window.from_state(window, ctx.device)
        self.divergence = _Divergence(ctx.device)
        self.per_epoch = steps_per_epoch(task.num_examples, self.s.batch_size, self.s.drop_last)
        self.tensorboard = None  # made with the first row: a run that fails at its first step leaves nothing
        self._order: tuple[int, torch.Tensor] | None = None  # (pass, its example order)

    def local_indices(self, step: int) -> torch.Tensor:
        epoch, position = divmod(step, self.per_epoch)
        if self._order is None or self._order[0] != epoch:
            generator = seeded_generator(self.s.seed, ORDER_STREAM, epoch)
            self._order = (epoch, torch.randperm(self.task.num_examples, generator=generator))
        global_batch = self._order[1][position * self.s.batch_size : (position + 1) * self.s.batch_size]
        return global_batch.tensor_split(self.ctx.world_size)[self.ctx.rank]

    def train_step(self, autocast) -> float:
        step, s = self.step, self.s
        if s.lr_schedule == "epoch":
            lr = epoch_warmup_cosine(s.lr, step // self.per_epoch, s.total_steps / self.per_epoch,
                                     s.warmup_steps / self.per_epoch)
        else:
            lr = warmup_cosine(s.lr, step, s.total_steps, s.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        torch.manual_seed(derive_seed(s.seed, DROPOUT_STREAM, step, self.ctx.rank))
        self.model.train()
        step_ctx = StepContext(step, self.ctx.rank, s.seed, self.ctx.device)
        with autocast:
            out = self.task.step(self.model, self.forward, self.local_indices(step), step_ctx)
        self.divergence.observe(out.loss, step)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss).backward()
        if self.ctx.enabled and s.gradient_sync == "all_reduce":
            average_gradients(self.model)
        self.scaler.unscale_(self.optimizer)
        if s.grad_clip and step >= s.clip_from_step:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.task.after_optimizer_step(self.model, step)
        self.window.add(out)
        self.step += 1
        return lr

    def append_row(self, lr: float, seconds: float) -> dict[str, Any]:
        self.divergence.check(self.task.what)
        names = sorted(self.window.sums)
        totals = torch.stack([*(self.window.sums[k] for k in names),
                              torch.tensor(float(self.window.count), device=self.ctx.device)])
        if self.ctx.enabled:
            torch.distributed.all_reduce(totals)
        row: dict[str, Any] = {"epoch": self.step // self.per_epoch, "step": self.step, "lr": lr}
        row.update(self.task.row_values(self.step - 1))
        row.update({name: float(totals[i] / totals[-1]) for i, name in enumerate(names)})
        row["seconds"] = round(self.window.seconds + seconds, 3)
        self.rows.append({k: row[k] for k in self.task.metric_columns})
        if self.tensorboard is None and self.ctx.is_main:
            self.tensorboard = _tensorboard_writer(self.out_dir)
        if self.tensorboard is not None:
            for key in self.task.metric_columns:
                if key not in ("epoch", "step", "seconds"):
                    self.tensorboard.add_scalar(f"train/{key}", row[key], self.step)
            self.tensorboard.flush()
        self.window = _Window()
        return self.rows[-1]

    def save_state(self, seconds: float) -> None:
        self.divergence.check(self.task.what)
        if not self.ctx.is_main:
            return
        write_json_atomic(self.out_dir / CONFIG_FILE, self.task.run_config)  # with the first thing the run keeps
        save_state(self.state_path, {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                                     "scaler": self.scaler.state_dict(), "step": self.step,
                                     "epoch": self.step // self.per_epoch, "metrics": self.rows,
                                     "window": self.window.to_state(seconds)})
        write_metrics(self.out_dir, self.rows, self.task.metric_columns)


def train(task: Task, out_dir: str | Path, ctx: DistContext, *, progress: bool = True,
          stop_after_step: int | None = None) -> Path:
    """Train `task` (or resume it) in `out_dir`; returns the final artefact's path, or the training state's
    when `stop_after_step` ends the run early, as an interruption would."""
    out_dir = Path(out_dir)
    final_path = out_dir / task.final_file
    if final_path.exists():
        if read_checkpoint_config(final_path).get(task.settings_key) != task.run_config[task.settings_key]:
            raise UserError(f"{final_path} was trained with different settings; use another --out")
        if ctx.is_main:
            print(f"{final_path} is already trained; nothing to do")
        return final_path
    check_resumable(out_dir, task.run_config, state_file=STATE_FILE, keys=(task.settings_key, "model"),
                    what=f"{task.what} run")
    if ctx.is_main:  # an unwritable --out is refused now; config.json comes with the first training state
        check_output_folder(out_dir)
    run = _Run(task, out_dir, ctx)
    s = task.settings
    if ctx.is_main:
        print(task.describe(run.model, ctx.device))
    autocast = arithmetic.autocast(s.precision, ctx.device)
    t0 = time.perf_counter()
    bar = tqdm(total=s.total_steps, initial=run.step, desc=task.what, unit="step",
               disable=not (progress and ctx.is_main), dynamic_ncols=True)
    while run.step < s.total_steps:
        lr = run.train_step(autocast)
        bar.update(1)
        step = run.step
        if step % s.log_every == 0 or step == s.total_steps:
            row = run.append_row(lr, time.perf_counter() - t0)
            t0 = time.perf_counter()
            if progress and ctx.is_main:
                tqdm.write(_row_text(row))
        if step % s.checkpoint_every == 0 or step == s.total_steps or step == stop_after_step:
            run.save_state(time.perf_counter() - t0)
        if step == stop_after_step and step < s.total_steps:
            bar.close()
            if ctx.enabled:
                torch.distributed.barrier()
            return run.state_path
    bar.close()
    if ctx.is_main:
        task.export(run.model, final_path)
        run.state_path.unlink(missing_ok=True)
    if ctx.enabled:
        torch.distributed.barrier()
    return final_path


def _row_text(row: dict[str, Any]) -> str:
    """One metrics row as the progress line printed with it, e.g. "step 60 (epoch 3): loss 0.41, ..."."""
    where = f"step {row['step']}" + (f" (epoch {row['epoch']})" if "epoch" in row else "")
    values = ", ".join(f"{k.replace('_', ' ')} {v:.4g}" for k, v in row.items() if k not in ("epoch", "step", "lr"))
    return f"{where}: {values}"


def _tensorboard_writer(out_dir: Path):
    """A TensorBoard writer when the tensorboard package is installed; metrics.csv is always written."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(out_dir / "tensorboard"))


def layer_id(name: str, depth: int) -> int:
    """Depth of a ViT parameter for layer-wise decay: embeddings 0, block i → i + 1, the rest depth + 1."""
    match = re.search(r"(?:^|\.)blocks\.(\d+)\.", name)
    if match:
        return int(match.group(1)) + 1
    if re.search(r"(patch|pos|cls|time|token|embed)", name) and not name.startswith("head"):
        return 0
    return depth + 1


def parameter_groups(model: torch.nn.Module, weight_decay: float, *, layer_decay: float | None = None,
                     depth: int | None = None) -> list[dict]:
    """The trainable parameters in optimizer groups: no weight decay on biases and norms (1-D tensors); with
    `layer_decay` (and the ViT's `depth`), a group per layer whose learning rate is scaled by
    layer_decay^(depth + 1 − layer)."""
    layered = layer_decay is not None and depth is not None
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = layer_id(name, depth) if layered else 0
        key = (layer, p.ndim > 1)
        group = groups.setdefault(key, {"params": [], "weight_decay": weight_decay if p.ndim > 1 else 0.0,
                                        "lr_scale": layer_decay ** ((depth + 1) - layer) if layered else 1.0})
        group["params"].append(p)
    return list(groups.values())
