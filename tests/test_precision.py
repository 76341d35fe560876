"""`--precision auto`: the decision rule, the cache, the CPUs without native bf16, the record in the log's
`.json` and its reuse on resume. No test here depends on how fast anything runs: the CPU flags and the
measured seconds are injected."""

import contextlib
import json
from pathlib import Path

import pytest
import torch

from rrcm.checkpoint import load_checkpoint
from rrcm.cli import main
from rrcm.data import load_dataset
from rrcm.distributed import DistContext
from rrcm.smoothing import precision
from rrcm.smoothing.precision import Decision, Probe, choose_precision, decide
from rrcm.smoothing.runner import CertifySettings, certify_dataset

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
NATIVE = frozenset({"avx2", "avx512f", "avx512_bf16"})
AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma"})


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("RRCM_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "rrcm" / "precision.json"


def never(*args, **kwargs):
    raise AssertionError("nothing may be timed here")


def measured(fp32, bf16, calls=None, probe_batch=64, busy_elsewhere=0.0):
    def measure():
        if calls is not None:
            calls.append(1)
        return Probe({"fp32": fp32, "bf16": bf16}, probe_batch, busy_elsewhere)
    return measure


def small_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 10)).eval()


# -- the rule --------------------------------------------------------------------------------------

@pytest.mark.parametrize("fp32,bf16,expected", [
    (1.0, 0.5, "bf16"), (1.0, 0.8, "bf16"), (1.0, 0.81, "fp32"), (1.0, 1.0, "fp32"), (1.0, 5.0, "fp32"),
    (1.0, float("nan"), "fp32"), (float("inf"), 1.0, "fp32"), (0.0, 0.0, "fp32")])
def test_bf16_only_when_clearly_faster(fp32, bf16, expected):
    assert decide(fp32, bf16) == expected


def test_a_cpu_without_native_bf16_gets_fp32_and_nothing_is_timed(monkeypatch):
    monkeypatch.setattr(precision, "timing_probe", never)
    decision = choose_precision(small_model(), (1, 8, 8), 100, "cpu", flags=AVX2_ONLY, measure=never)
    assert decision.precision == "fp32" and decision.seconds is None
    assert "no native bf16" in decision.reason
    assert not precision.cache_path().exists()  # nothing measured, nothing cached
    # the machine's own flags are read from /proc/cpuinfo's format
    monkeypatch.setattr(precision, "cpu_flags", lambda path="/proc/cpuinfo": AVX2_ONLY)
    assert choose_precision(small_model(), (1, 8, 8), 100, "cpu").precision == "fp32"


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu sse2 avx2 avx512_bf16\n")
    assert precision.cpu_flags(info) == {"fpu", "sse2", "avx2", "avx512_bf16"}
    assert precision.cpu_name(info) == "Some CPU"
    assert precision.cpu_flags(tmp_path / "absent") == frozenset()  # not Linux: no native bf16 known, fp32
    assert precision.native_bf16_flags({"amx_bf16", "avx2"}) == ["amx_bf16"]


@pytest.mark.parametrize("supported,expected", [(True, "bf16"), (False, "fp32")])
def test_cuda_takes_bf16_when_supported_without_timing(supported, expected, monkeypatch):
    asked = []

    def is_bf16_supported(including_emulation=True):
        asked.append(including_emulation)
        return supported

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    decision = precision.untimed_decision(torch.device("cuda", 0), flags=AVX2_ONLY)
    assert asked == [False]  # an emulated bf16 (before compute capability 8.0) does not count
    assert decision.precision == expected and decision.seconds is None


def test_a_native_bf16_cpu_decides_by_the_measured_times():
    assert choose_precision(small_model(), (1, 8, 8), 100, "cpu", flags=NATIVE,
                            measure=measured(2.0, 1.0), use_cache=False).precision == "bf16"
    slow = choose_precision(small_model(), (1, 8, 8), 100, "cpu", flags=NATIVE,
                            measure=measured(1.0, 3.0), use_cache=False)
    assert slow.precision == "fp32" and slow.seconds == {"fp32": 1.0, "bf16": 3.0} and slow.probe_batch == 64
    assert "3.0" in slow.reason or "3e+03" in slow.reason


# -- the cache -------------------------------------------------------------------------------------

def test_the_decision_is_cached_per_model_shape_and_batch(private_cache):
    model, calls = small_model(), []
    first = choose_precision(model, (1, 8, 8), 100, "cpu", flags=NATIVE, measure=measured(2.0, 1.0, calls))
    assert first.precision == "bf16" and not first.cached and private_cache.is_file()
    again = choose_precision(model, (1, 8, 8), 100, "cpu", flags=NATIVE, measure=never)
    assert again.precision == "bf16" and again.cached and again.seconds == {"fp32": 2.0, "bf16": 1.0}
    # another batch size, image shape, memory format or model is measured afresh
    choose_precision(model, (1, 8, 8), 200, "cpu", flags=NATIVE, measure=measured(1.0, 2.0, calls))
    choose_precision(model, (1, 9, 9), 100, "cpu", flags=NATIVE, measure=measured(1.0, 2.0, calls))
    choose_precision(model, (1, 8, 8), 100, "cpu", flags=NATIVE, channels_last=True, measure=measured(1.0, 2.0, calls))
    wider = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    choose_precision(wider, (1, 8, 8), 100, "cpu", flags=NATIVE, measure=measured(1.0, 2.0, calls))
    assert len(calls) == 5
    # weights do not matter, only the structure
    other_weights = small_model()
    with torch.no_grad():
        other_weights[0].weight.add_(1.0)
    assert choose_precision(other_weights, (1, 8, 8), 100, "cpu", flags=NATIVE, measure=never).cached
    # the machine is part of the key: another torch thread count re-measures
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        choose_precision(model, (1, 8, 8), 100, "cpu", flags=NATIVE, measure=measured(1.0, 2.0, calls))
    finally:
        torch.set_num_threads(threads)
    assert len(calls) == 6
    assert len(json.loads(private_cache.read_text())) == 6


def test_a_probe_beside_other_work_decides_this_run_only(private_cache):
    calls = []
    contended = choose_precision(small_model(), (1, 8, 8), 100, "cpu", flags=NATIVE,
                                 measure=measured(2.0, 1.0, calls, busy_elsewhere=1.2))
    assert contended.precision == "bf16" and "not cached" in contended.reason and not private_cache.exists()
    choose_precision(small_model(), (1, 8, 8), 100, "cpu", flags=NATIVE, measure=measured(2.0, 1.0, calls))
    assert len(calls) == 2 and private_cache.is_file()


def test_cache_location_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert precision.cache_path() == tmp_path / "x" / "rrcm" / "precision.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert precision.cache_path() == tmp_path / "home" / ".cache" / "rrcm" / "precision.json"
    monkeypatch.setenv("RRCM_CACHE", str(tmp_path / "r"))
    assert precision.cache_path() == tmp_path / "r" / "precision.json"


def test_a_damaged_or_unwritable_cache_only_costs_a_new_probe(private_cache, tmp_path, monkeypatch):
    private_cache.parent.mkdir(parents=True)
    private_cache.write_text("{not json")
    calls = []
    assert choose_precision(small_model(), (1, 8, 8), 100, "cpu", flags=NATIVE,
                            measure=measured(2.0, 1.0, calls)).precision == "bf16"
    assert len(json.loads(private_cache.read_text())) == 1 and calls == [1]
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # its rrcm/ folder cannot be created
    with pytest.warns(UserWarning, match="precision cache"):
        assert choose_precision(small_model(), (1, 8, 8), 100, "cpu", flags=NATIVE,
                                measure=measured(2.0, 1.0)).precision == "bf16"


# -- the probe itself, with a fake clock ------------------------------------------------------------

def test_the_probe_runs_the_model_on_the_input_shape_in_both_precisions_and_leaves_it_as_it_was():
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3 * 4 * 4, 2)
            self.dropout = torch.nn.Dropout(0.5)

        def forward(self, x):
            seen.append((tuple(x.shape), torch.is_autocast_enabled("cpu"), self.training,
                         x.is_contiguous(memory_format=torch.channels_last)))
            return self.linear(self.dropout(x.flatten(1)))

    clock = iter(i * 1e-6 for i in range(10_000))  # every forward "takes" a microsecond
    model = Spy().train()
    rng = torch.get_rng_state()
    probe = precision.timing_probe(model, (3, 4, 4), 50, torch.device("cpu"), channels_last=True, repeats=3,
                                   timer=lambda: next(clock))
    assert torch.equal(torch.get_rng_state(), rng)  # the probe draws no global random numbers
    assert model.training and model.dropout.training  # the caller's mode is back
    assert all(not training for _, _, training, _ in seen)  # and every forward ran in eval mode
    assert all(cl for *_, cl in seen)
    # three small calibration forwards in fp32, then 1 warm-up + 3 timed forwards in each precision
    assert [s[:2] for s in seen[:3]] == [((8, 3, 4, 4), False)] * 3
    timed = seen[3:]
    assert len(timed) == 8 and [s[1] for s in timed] == [False, True] * 4
    assert probe.probe_batch == 50 and {s[0] for s in timed} == {(50, 3, 4, 4)}
    assert probe.seconds == {"fp32": pytest.approx(1e-6), "bf16": pytest.approx(1e-6)}
    assert probe.busy_elsewhere >= 0


def test_the_probe_batch_shrinks_to_fit_the_budget():
    # A fake clock where every forward of the calibration batch of 8 takes 8 s: one sample costs 1 s,
    # far beyond the budget, so the probe uses a batch of 1 instead of the certification batch.
    ticks = iter(range(0, 10**6, 8))
    probe = precision.timing_probe(small_model(), (1, 8, 8), 1000, torch.device("cpu"),
                                   timer=lambda: float(next(ticks)))
    assert probe.probe_batch == 1
    # a fast clock: the certification batch itself
    ticks = iter(i * 1e-6 for i in range(10**6))
    probe = precision.timing_probe(small_model(), (1, 8, 8), 100, torch.device("cpu"), timer=lambda: next(ticks))
    assert probe.probe_batch == 100


def test_dry_run_description_times_nothing(monkeypatch):
    monkeypatch.setattr(precision, "timing_probe", never)
    assert "fp32" in precision.describe_auto("cpu", flags=AVX2_ONLY)
    assert "no native bf16" in precision.describe_auto("cpu", flags=AVX2_ONLY)
    text = precision.describe_auto("cpu", flags=NATIVE)
    assert "probe" in text and "avx512_bf16" in text
    assert precision.describe_dry_run("fp32", "cpu") is None


# -- a certification run ---------------------------------------------------------------------------

from tests.test_runner import Interrupting  # noqa: E402  (one copy of the Ctrl-C stand-in)


AUTO = CertifySettings(sigma=0.5, n0=10, n=100, alpha=0.001, batch_size=64, seed=3, skip=50, precision="auto")


def machine(monkeypatch, flags, seconds=None):
    """Pretend to run on a CPU with `flags` whose probe measures `seconds` (None: the probe must not run)."""
    calls = []

    def probe(*args, **kwargs):
        if seconds is None:
            raise AssertionError("the probe ran")
        calls.append(args)
        return Probe(dict(seconds), 64)

    monkeypatch.setattr(precision, "cpu_flags", lambda path="/proc/cpuinfo": frozenset(flags))
    monkeypatch.setattr(precision, "timing_probe", probe)
    return calls


def run_json(log: Path) -> dict:
    return json.loads(Path(f"{log}.json").read_text())


def rows(log: Path) -> list[list[str]]:
    lines = Path(log).read_text().splitlines()
    keep = [i for i, name in enumerate(lines[0].split("\t")) if name != "time"]
    return [[f[i] for i in keep] for f in (line.split("\t") for line in lines)]


@pytest.fixture(scope="module")
def lenet(tiny_checkpoint):
    model, _ = load_checkpoint(tiny_checkpoint)
    return model, load_dataset("digits", "test")


@pytest.mark.parametrize("flags,seconds,expected", [(NATIVE, {"fp32": 2.0, "bf16": 1.0}, "bf16"),
                                                    (NATIVE, {"fp32": 1.0, "bf16": 3.0}, "fp32"),
                                                    (AVX2_ONLY, None, "fp32")],
                         ids=["probe-picks-bf16", "probe-picks-fp32", "no-native-bf16"])
def test_auto_is_recorded_as_the_concrete_precision(flags, seconds, expected, lenet, tmp_path, monkeypatch,
                                                    tiny_checkpoint):
    model, data = lenet
    calls = machine(monkeypatch, flags, seconds)
    log = certify_dataset(model, data, AUTO, tmp_path / "auto.tsv", ctx=CPU, checkpoint_path=tiny_checkpoint,
                          progress=False)
    recorded = run_json(log)
    assert recorded["settings"]["precision"] == expected
    assert recorded["precision_choice"]["requested"] == "auto"
    assert recorded["precision_choice"]["precision"] == expected
    assert len(calls) == (0 if seconds is None else 1)
    if seconds is not None:  # the probe saw the data's image shape and the run's batch size
        _, shape, batch_size, device = calls[0][:4]
        assert (shape, batch_size, device.type) == ((1, 8, 8), 64, "cpu")
    explicit = CertifySettings(**{**AUTO.__dict__, "precision": expected})
    reference = certify_dataset(model, data, explicit, tmp_path / "explicit.tsv", ctx=CPU,
                                checkpoint_path=tiny_checkpoint, progress=False)
    assert rows(log) == rows(reference)
    assert run_json(reference)["precision_choice"] == {"requested": expected, "precision": expected,
                                                       "reason": "requested", "seconds": None,
                                                       "probe_batch": None, "cached": False, "busy_elsewhere": None}


def test_a_resumed_auto_run_reuses_the_recorded_precision(lenet, tmp_path, monkeypatch, tiny_checkpoint):
    model, data = lenet
    log = tmp_path / "log.tsv"
    machine(monkeypatch, NATIVE, {"fp32": 2.0, "bf16": 1.0})
    with pytest.raises(KeyboardInterrupt):  # fetches: the probe's example, the smoke batch's, 2 certified
        certify_dataset(model, Interrupting(data, 5), AUTO, log, ctx=CPU, checkpoint_path=tiny_checkpoint,
                        progress=False)
    assert run_json(log)["settings"]["precision"] == "bf16" and run_json(log)["complete"] is False
    # Resumed where the probe would now say fp32, or on a CPU without native bf16: never probed, bf16 kept.
    machine(monkeypatch, AVX2_ONLY, None)
    certify_dataset(model, data, AUTO, log, ctx=CPU, checkpoint_path=tiny_checkpoint, progress=False)
    assert run_json(log)["settings"]["precision"] == "bf16" and run_json(log)["complete"] is True
    assert "recorded" in run_json(log)["precision_choice"]["reason"]
    explicit = CertifySettings(**{**AUTO.__dict__, "precision": "bf16"})
    reference = certify_dataset(model, data, explicit, tmp_path / "ref.tsv", ctx=CPU,
                                checkpoint_path=tiny_checkpoint, progress=False)
    assert rows(log) == rows(reference)
    # the finished log is complete for auto and for the recorded value, and refused for another one
    machine(monkeypatch, NATIVE, None)
    assert certify_dataset(model, data, AUTO, log, ctx=CPU, checkpoint_path=tiny_checkpoint, progress=False) == log
    from rrcm.errors import UserError

    with pytest.raises(UserError, match="different precision"):
        certify_dataset(model, data, CertifySettings(**{**AUTO.__dict__, "precision": "fp32"}), log, ctx=CPU,
                        checkpoint_path=tiny_checkpoint, progress=False)


def test_resolving_a_run_with_a_failing_model_falls_back_to_fp32(tmp_path):
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied\nmore")

    data = load_dataset("digits", "test")
    decision = precision.resolve_run_precision("auto", Broken(), data, [0], batch_size=8, channels_last=False,
                                               run_config_path=tmp_path / "none.json", ctx=CPU,
                                               chooser=lambda *a, **k: choose_precision(*a, **k, flags=NATIVE,
                                                                                       use_cache=False))
    assert decision.precision == "fp32" and "probe failed (mat1" in decision.reason
    assert precision.resolve_run_precision("fp16", Broken(), data, [0], batch_size=8, channels_last=False,
                                           run_config_path=tmp_path / "none.json", ctx=CPU) == Decision("fp16",
                                                                                                      "requested")


def test_cli_default_is_auto_and_its_dry_run_times_nothing(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    machine(monkeypatch, NATIVE, None)
    code = main(["certify", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "l"), "--dry-run",
                 "--device", "cpu"])
    assert code == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["settings"]["precision"] == "auto"
    assert "probe" in resolved["precision_auto"] and "avx512_bf16" in resolved["precision_auto"]
    machine(monkeypatch, AVX2_ONLY, None)
    assert main(["certify", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "l"), "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["precision_auto"].startswith("auto: fp32 (")
    assert list(tmp_path.iterdir()) == []


def test_cli_records_what_auto_chose(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    machine(monkeypatch, NATIVE, {"fp32": 1.0, "bf16": 0.5})
    log = tmp_path / "log.tsv"
    assert main(["certify", "--checkpoint", str(tiny_checkpoint), "--n0", "10", "--n", "100", "--skip", "100",
                 "--device", "cpu", "--out", str(log), "--quiet"]) == 0
    assert run_json(log)["settings"]["precision"] == "bf16"


def test_help_says_what_was_measured_where(capsys):
    with pytest.raises(SystemExit):
        main(["certify", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "auto (default)" in text and "AVX2-only" in text and "avx512_bf16" in text and "AMD EPYC" in text
    assert "~2×" not in text
