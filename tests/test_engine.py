"""The training engine on a toy task: resume, metrics, divergence, fp16 loss scaling, per-step randomness."""

import csv
import math
from pathlib import Path

import pytest
import torch

from rrcm.checkpoint import load_state, save_checkpoint
from rrcm.distributed import DistContext
from rrcm.errors import UserError
from rrcm.smoothing.noise import derive_seed
from rrcm.train import engine
from rrcm.train.engine import EngineSettings, StepContext, StepOutput, parameter_groups

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
NUM_EXAMPLES = 37  # with batches of 8: four full batches and one of 5 in every pass


class ToyTask:
    """Least squares y = x·w on fixed data, with noise drawn from the step's own generator."""

    what = "toy training"
    settings_key = "train"
    final_file = "toy.safetensors"
    metric_columns = ("epoch", "step", "lr", "loss", "mean_index", "seconds")

    def __init__(self, nan_from_step=None, **settings):
        self.num_examples = NUM_EXAMPLES
        defaults = dict(seed=5, total_steps=10, batch_size=8, drop_last=False, lr=0.05, warmup_steps=2,
                        log_every=3, checkpoint_every=2, optimizer="sgd", momentum=0.9)
        self.settings = EngineSettings(**{**defaults, **settings})
        self.run_config = {"train": {"toy": True, **self.settings.__dict__}, "model": {"arch": "lenet"}}  # any known arch: the finished-run check reads it
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(NUM_EXAMPLES, 4, generator=generator)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
        self.nan_from_step = nan_from_step
        self.seen_indices = []

    def build(self, ctx):
        return torch.nn.Linear(4, 1).to(ctx.device)

    def parameter_groups(self, model):
        return parameter_groups(model, 1e-4)

    def describe(self, model, device):
        return "toy"

    def step(self, model, forward, indices, ctx):
        self.seen_indices.append(indices.clone())
        noise = 0.01 * torch.randn(len(indices), generator=ctx.generator(7))
        loss = ((forward(self.x[indices]).squeeze(1) - self.y[indices] - noise) ** 2).mean()
        if self.nan_from_step is not None and ctx.step >= self.nan_from_step:
            loss = loss * float("nan")
        return StepOutput(loss, {"loss": loss.detach() * len(indices), "mean_index": indices.sum()}, len(indices))

    def after_optimizer_step(self, model, step):
        pass

    def row_values(self, step):
        return {}

    def export(self, model, path):
        save_checkpoint(path, model, {"kind": "toy", "model": self.run_config["model"], "train": self.run_config["train"]})


def rows(path: Path):
    with open(path / "metrics.csv") as f:
        return list(csv.DictReader(f))


def without_seconds(table):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in table]


def test_an_interrupted_run_resumes_to_the_same_files(tmp_path):
    straight = engine.train(ToyTask(), tmp_path / "a", CPU, progress=False)
    # interruptions at steps 2 and 5, inside the metrics windows (rows at 3, 6, 9, 10)
    assert engine.train(ToyTask(), tmp_path / "b", CPU, progress=False, stop_after_step=2).name == engine.STATE_FILE
    assert load_state(tmp_path / "b" / engine.STATE_FILE)["step"] == 2
    assert engine.train(ToyTask(), tmp_path / "b", CPU, progress=False, stop_after_step=5).name == engine.STATE_FILE
    resumed = engine.train(ToyTask(), tmp_path / "b", CPU, progress=False)
    assert straight.read_bytes() == resumed.read_bytes()
    assert without_seconds(rows(tmp_path / "a")) == without_seconds(rows(tmp_path / "b"))
    assert [r["step"] for r in rows(tmp_path / "a")] == ["3", "6", "9", "10"]
    assert [r["epoch"] for r in rows(tmp_path / "a")] == ["0", "1", "1", "2"]  # five steps per pass
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["config.json", "metrics.csv", "toy.safetensors"]
    # a finished run is not trained again; other settings in its folder are refused
    assert engine.train(ToyTask(), tmp_path / "a", CPU, progress=False) == straight
    with pytest.raises(UserError, match="different settings"):
        engine.train(ToyTask(lr=0.1), tmp_path / "a", CPU, progress=False)


def test_every_pass_visits_each_example_once_and_rows_average_over_examples(tmp_path):
    task = ToyTask(total_steps=10, log_every=5, checkpoint_every=10)  # a row per pass over the 37 examples
    engine.train(task, tmp_path, CPU, progress=False)
    for epoch in range(2):
        visited = torch.cat(task.seen_indices[5 * epoch : 5 * (epoch + 1)])
        assert sorted(visited.tolist()) == list(range(NUM_EXAMPLES))
    assert [len(i) for i in task.seen_indices[:5]] == [8, 8, 8, 8, 5]
    # the row is the mean over the pass's examples (not over its steps): exactly (0 + ... + 36) / 37
    assert [float(r["mean_index"]) for r in rows(tmp_path)] == [18.0, 18.0]
    # the warm-up reaches the peak at step 2, the cosine reaches zero after the last step
    assert float(rows(tmp_path)[-1]["lr"]) == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))


def test_a_diverged_run_stops_at_the_next_row_and_keeps_no_state_after_it(tmp_path):
    with pytest.raises(UserError) as failure:
        engine.train(ToyTask(nan_from_step=4), tmp_path, CPU, progress=False)
    assert str(failure.value) == "toy training diverged (loss nan at step 4); lower --lr"
    # the states at steps 2 and 4 were saved before step 4 ran; none after it
    assert load_state(tmp_path / engine.STATE_FILE)["step"] == 4
    assert [r["step"] for r in rows(tmp_path)] == ["3"]


def test_fp16_scales_the_loss_and_its_scale_resumes(tmp_path):
    engine.train(ToyTask(precision="fp16"), tmp_path / "a", CPU, progress=False, stop_after_step=4)
    scaler = load_state(tmp_path / "a" / engine.STATE_FILE)["scaler"]
    assert scaler["scale"] > 1  # the scaler's state travels with the run
    straight = engine.train(ToyTask(precision="fp16"), tmp_path / "b", CPU, progress=False)
    resumed = engine.train(ToyTask(precision="fp16"), tmp_path / "a", CPU, progress=False)
    assert straight.read_bytes() == resumed.read_bytes()


def test_a_step_draws_from_generators_keyed_by_seed_stream_step_and_rank():
    ctx = StepContext(step=4, rank=1, seed=9, device=torch.device("cpu"))
    draw = torch.rand(3, generator=ctx.generator(7))
    expected = torch.rand(3, generator=torch.Generator().manual_seed(derive_seed(9, 7, 4, 1)))
    assert torch.equal(draw, expected)
    shared = torch.rand(3, generator=ctx.generator(7, per_rank=False))
    assert torch.equal(shared, torch.rand(3, generator=torch.Generator().manual_seed(derive_seed(9, 7, 4))))


def test_parameter_groups_decay_matrices_only_and_scale_layers():
    model = torch.nn.Sequential()
    model.add_module("blocks", torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)]))
    model.add_module("head", torch.nn.Linear(2, 1))
    groups = parameter_groups(model, 0.05, layer_decay=0.5, depth=2)
    by_params = {tuple(id(p) for p in g["params"]): (g["weight_decay"], g["lr_scale"]) for g in groups}
    block0, block1, head = model.blocks[0], model.blocks[1], model.head
    assert by_params == {(id(block0.weight),): (0.05, 0.25), (id(block0.bias),): (0.0, 0.25),
                         (id(block1.weight),): (0.05, 0.5), (id(block1.bias),): (0.0, 0.5),
                         (id(head.weight),): (0.05, 1.0), (id(head.bias),): (0.0, 1.0)}
    plain = parameter_groups(model, 0.05)
    assert [(g["weight_decay"], g["lr_scale"], len(g["params"])) for g in plain] == [(0.05, 1.0, 3), (0.0, 1.0, 3)]


def test_gradients_are_clipped_only_from_clip_from_step_on(tmp_path, monkeypatch):
    clipped_at = []
    task = ToyTask(total_steps=6, grad_clip=1.0, clip_from_step=3)
    original = torch.nn.utils.clip_grad_norm_

    def spy(parameters, max_norm, *args, **kwargs):
        clipped_at.append(len(task.seen_indices) - 1)  # the step whose gradient this is
        return original(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    engine.train(task, tmp_path, CPU, progress=False)
    assert clipped_at == [3, 4, 5]


@pytest.mark.parametrize("precision,dtype", [("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_one_autocast_per_precision_name(precision, dtype):
    from rrcm.arithmetic import autocast

    with autocast(precision, torch.device("cpu")):
        enabled = torch.is_autocast_enabled("cpu")
        assert enabled == (dtype is not None)
        if enabled:
            assert torch.get_autocast_dtype("cpu") == dtype
