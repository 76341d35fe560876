"""Mutation testing of the certification core: which small, planted bugs does the test suite miss?

    pip install -e ".[test,mutation]"        # once (mutmut 3.8.1)
    python tools/mutation.py                  # all core modules, 2 processes, writes docs/mutation.md
    python tools/mutation.py --time-limit 1800 --report /tmp/m.md
    python tools/mutation.py --report-only    # the report again from the last run (after editing the yaml)

mutmut copies `src/` and `tests/` into `mutants/`, plants one mutant at a time in the modules listed in
`[tool.mutmut] only_mutate` (pyproject.toml) and runs, for each mutant, only the tests that executed
the mutated function in a first, recorded run (the test selection there): the tests each mutant needs,
not the whole suite. Tests marked `slow` (torchrun) are left out to bound the time on 2 cores.

Every surviving mutant ends up in the report. Survivors that cannot change any output (equivalent) or
that are accepted for a stated reason are listed in tools/mutation_accepted.yaml, matched by module,
function and the changed lines (not by mutmut's numbering, which shifts when the code changes). The
score is killed / (all − equivalent): an accepted survivor still counts against it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ACCEPTED = ROOT / "tools" / "mutation_accepted.yaml"
FIXTURE_CACHE = ROOT / "mutants" / "fixture-cache"
KILLED = {"killed", "caught by type check", "segfault"}  # the suite noticed
# a timeout may be a mutant that loops forever or a slow machine: reported apart, never counted as killed


def mutmut(*args: str, timeout: float | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=check)


def mutmut_env() -> dict:
    """mutmut forks each mutant's test process from a parent that has already run the suite once. A
    parent with torch's OpenMP thread pool running forks children that wait forever on a lock one of
    those threads held (seen: every child asleep in futex_wait, no CPU used). One thread per process
    avoids the pool, and with one process per core it loses nothing."""
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", RRCM_NO_REEXEC="1",
                RRCM_TEST_FIXTURE_CACHE=str(FIXTURE_CACHE))


def build_fixtures() -> None:
    """Train the tests' tiny models once, with the unmutated code, for every mutant's test process to copy
    (tests/helpers/fixture_cache.py); without this each of them trains its own."""
    env = dict(mutmut_env(), PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    subprocess.run([sys.executable, "-m", "tests.helpers.fixture_cache", str(FIXTURE_CACHE)], cwd=ROOT, env=env,
                   check=True)


def mutant_diffs(names: list[str]) -> dict[str, str]:
    """Each mutant's diff against the original, computed in one process (`mutmut show` per mutant costs a
    second of start-up each)."""
    script = ("import json, sys\nfrom mutmut.mutation.diff_apply import get_diff_for_mutant\n"
              "print(json.dumps({name: get_diff_for_mutant(name) for name in json.loads(sys.stdin.read())}))")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, input=json.dumps(names), capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout)


def parse_name(name: str) -> tuple[str, str]:
    """(module, function) of a mutmut mutant name such as rrcm.smoothing.stats.x_radius__mutmut_3."""
    module, _, rest = name.partition(".x")
    # functions are spelled x_name (x__name for _name), class methods xǁClassǁmethod
    rest = rest[1:] if rest.startswith("_") else rest
    function = rest.rsplit("__mutmut_", 1)[0].replace("ǁ", ".").strip(".")
    return module, function


def changed_lines(diff: str) -> tuple[list[str], list[str]]:
    removed = [line[1:].strip() for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return removed, added


def load_accepted() -> list[dict]:
    if not ACCEPTED.exists():
        return []
    entries = yaml.safe_load(ACCEPTED.read_text()) or []
    for entry in entries:
        if entry.get("kind") not in ("equivalent", "accepted") or not entry.get("reason"):
            raise SystemExit(f"{ACCEPTED}: every entry needs kind equivalent|accepted and a reason: {entry}")
    return entries


def match_accepted(entries: list[dict], module: str, function: str, removed: list[str], added: list[str]):
    for entry in entries:
        if (entry["module"], entry["function"]) == (module, function) and \
                [s.strip() for s in entry["removed"]] == removed and [s.strip() for s in entry["added"]] == added:
            return entry
    return None


RUN_RECORD = ROOT / "mutants" / "rrcm-run.json"  # when and how long the last run was, for --report-only


def machine() -> str:
    """The CPU model, its bf16 flags and the number of CPUs, e.g. "Intel(R) Xeon(R) Processor (amx_bf16,
    avx512_bf16), 2 CPUs"."""
    from rrcm.profiling import cpu_summary

    return f"{cpu_summary()}, {os.cpu_count()} CPUs"


def run_mutmut(args) -> dict:
    """Run mutmut over the core (or `args.modules`) and return what the report says about the run."""
    if not args.resume:
        shutil.rmtree(ROOT / "mutants", ignore_errors=True)
    if not FIXTURE_CACHE.is_dir():
        build_fixtures()
    started = datetime.datetime.now()
    timed_out = False
    try:
        # mutmut exits non-zero when mutants survive; that is a result, not a failure of this script
        patterns = [f"{module}.x*" for module in args.modules]  # mutmut's mutant names start module.x
        subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children), *patterns],
                       cwd=ROOT, env=mutmut_env(), timeout=args.time_limit,
                       stdout=subprocess.DEVNULL if args.quiet else None, check=False)
    except subprocess.TimeoutExpired:
        timed_out = True
    record = {"date": f"{started:%Y-%m-%d}", "machine": machine(), "processes": args.max_children,
              "minutes": round((datetime.datetime.now() - started).total_seconds() / 60, 1), "timed_out": timed_out}
    RUN_RECORD.write_text(json.dumps(record))
    return record


def run(args) -> int:
    if args.report_only:
        if not RUN_RECORD.is_file():
            print(f"no finished run to report on ({RUN_RECORD} is missing); run without --report-only first",
                  file=sys.stderr)
            return 1
        record = json.loads(RUN_RECORD.read_text())
    else:
        record = run_mutmut(args)

    listing = mutmut("results", "--all", "true", check=False).stdout
    statuses = {}
    for line in listing.splitlines():
        if ":" in line:
            name, status = line.strip().rsplit(":", 1)
            statuses[name.strip()] = status.strip()
    if not statuses:
        print("mutmut produced no results; run `python -m mutmut run` by hand to see why", file=sys.stderr)
        return 1

    accepted = load_accepted()
    diffs = mutant_diffs([name for name, status in statuses.items() if status not in KILLED | {"not checked", "timeout"}])
    per_module: dict[str, Counter] = defaultdict(Counter)
    survivors = []
    used_entries = set()
    for name, status in sorted(statuses.items()):
        module, function = parse_name(name)
        if args.modules and module not in args.modules:
            continue
        if status in KILLED:
            per_module[module]["killed"] += 1
            continue
        if status in ("not checked", "timeout"):
            per_module[module][status] += 1
            continue
        diff = diffs.get(name, "")
        removed, added = changed_lines(diff)
        entry = match_accepted(accepted, module, function, removed, added)
        kind = entry["kind"] if entry else "open"
        if entry:
            used_entries.add(id(entry))
        per_module[module][kind] += 1
        survivors.append((module, function, name, status, kind, entry["reason"] if entry else "", diff))

    lines = ["# Mutation testing of the certification core", "",
             f"Generated by `python tools/mutation.py` on {record['date']} ({record['machine']}, "
             f"{record['processes']} processes, {record['minutes']:.1f} min"
             f"{', stopped at the time limit' if record['timed_out'] else ''}); "
             "mutmut 3.8.1, " + (f"modules {', '.join(args.modules)} only" if args.modules else
                                 "the modules in `[tool.mutmut] only_mutate`") + ", tests not marked `slow`.", "",
             "Score = killed / (all − equivalent). *Accepted* survivors can change an output but are left, with "
             "the reason; *open* ones are holes in the suite.", "",
             "| module | mutants | killed | timeout | equivalent | accepted | open | not checked | score |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    totals = Counter()
    for module in sorted(per_module):
        c = per_module[module]
        totals.update(c)
        lines.append(_row(module, c))
    lines.append(_row("**all**", totals))
    lines += ["", "## Survivors", ""]
    if not survivors:
        lines.append("None.")
    for module, function, name, status, kind, reason, diff in survivors:
        lines += [f"### `{name}` ({status}, {kind})", ""]
        if reason:
            lines += [reason, ""]
        body = "\n".join(line for line in diff.splitlines() if not line.startswith("#"))
        lines += ["```diff", body.strip(), "```", ""]
    stale = [e for e in accepted if id(e) not in used_entries]
    if stale:
        lines += ["## Entries of tools/mutation_accepted.yaml that matched no survivor", ""]
        lines += [f"- {e['module']}.{e['function']}: {e['removed']} → {e['added']}" for e in stale]
    report = Path(args.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines).rstrip() + "\n")
    score = _score(totals)
    print(f"score {score:.1%} ({totals['killed']} killed of {sum(totals.values()) - totals['equivalent']} "
          f"non-equivalent mutants; {totals['open']} open, {totals['accepted']} accepted); report: {report}")
    return 0


def _score(c: Counter) -> float:
    # mutants never run (time limit reached) are left out; timeouts count as not killed
    denominator = sum(c.values()) - c["equivalent"] - c["not checked"]
    return c["killed"] / denominator if denominator else float("nan")


def _row(module: str, c: Counter) -> str:
    total = sum(c.values())
    return (f"| {module} | {total} | {c['killed']} | {c['timeout']} | {c['equivalent']} | {c['accepted']} | {c['open']} | "
            f"{c['not checked']} | {_score(c):.1%} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-children", type=int, default=2, help="parallel test processes (default 2)")
    parser.add_argument("--time-limit", type=float, default=3600, help="seconds before mutmut is stopped")
    parser.add_argument("--report", default=str(ROOT / "docs" / "mutation.md"), help="report to write")
    parser.add_argument("--resume", action="store_true", help="keep mutants/ and mutmut's cached results")
    parser.add_argument("--quiet", action="store_true", help="no mutmut progress output")
    parser.add_argument("--report-only", action="store_true",
                        help="no mutmut run: the report again from the last run's results (e.g. after editing "
                             "tools/mutation_accepted.yaml)")
    parser.add_argument("--modules", nargs="+", default=[], metavar="MODULE",
                        help="only these modules, e.g. rrcm.smoothing.stats (default: all of only_mutate)")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
