"""Apply each mutant to a copy of the tree, run its tests, and say whether they caught it.

    python -m tests.mutants                      # every mutant, all its tests, once
    python -m tests.mutants --repeat 5           # five times each (aimed faults: 5 of 5)
    python -m tests.mutants --unit --jobs 4      # only the unit tests of each, 4 at a time
    python -m tests.mutants feed_uncounted       # some mutants only
    python -m tests.mutants --check              # only check that every patch applies
    python -m tests.mutants --list               # the table

Per run, the working tree (uncommitted edits included; not .git, .venv or caches)
is copied to a fresh temporary directory and the patch applied with `git apply`,
which takes no fuzz: a patch whose context moved fails loudly, and must be
regenerated. Before the mutants, the same tests run once on an unpatched copy
(`--no-baseline` skips it): a test that fails without a mutant proves nothing.

`--jobs N` runs N mutants at once (each pytest in its own copy; the integration
tests each start their own broker, so keep 1 for them on a small machine), and
`--timeout S` fails a test that runs past S seconds (pytest-timeout; without it,
the project's 300): a unit test that catches a mutant by a bounded wait may then
spend its shutdown deadline waiting for a handler the mutant left stuck.

A mutant is killed in a run when at least one of its tests failed; a test that
errors (a fixture that could not start, a node id that no longer exists) or a
pytest that did not finish is an error, never a kill. Exit status: 0 when every
mutant was killed in every run, 1 when one survived a run, 2 on errors.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

from tests.mutants import MUTANTS, ROOT, Mutant, by_name

IGNORED = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis",
    "*.egg-info", "node_modules",
)  # fmt: skip
#: One pytest run of a mutant's tests may take this long before it counts as an error.
RUN_TIMEOUT_S = 1200


class RunnerError(Exception):
    """The runner could not judge a mutant (a patch that no longer applies, a broken run)."""


@dataclass(slots=True)
class Tally:
    """One mutant's results over the runs: runs killed, and failures per test."""

    mutant: Mutant
    tests: tuple[str, ...]
    runs: int = 0
    killed: int = 0
    errors: list[str] = field(default_factory=list)
    failed: Counter[str] = field(default_factory=Counter)
    #: test -> why it failed, each distinct first line pytest gave.
    why: dict[str, set[str]] = field(default_factory=dict)
    seconds: float = 0.0


def copy_tree(workdir: Path) -> Path:
    """Copy the working tree, as it is now, to a new directory under `workdir`."""
    tree = Path(tempfile.mkdtemp(prefix="tree-", dir=workdir)) / "streamworker"
    shutil.copytree(ROOT, tree, ignore=IGNORED, symlinks=True)
    return tree


def apply_patch(mutant: Mutant, tree: Path) -> None:
    """Apply the mutant's patch to `tree`; raise RunnerError if it does not apply exactly."""
    if not mutant.patch.exists():
        raise RunnerError(f"{mutant.name}: no patch at {mutant.patch}")
    for check in (["--check"], []):
        done = subprocess.run(
            ["git", "apply", *check, "--whitespace=nowarn", str(mutant.patch)],
            cwd=tree, capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise RunnerError(
                f"{mutant.name}: {mutant.patch.name} no longer applies to worker/ "
                f"(regenerate it against the current code):\n{done.stderr.strip()}"
            )


def _env(tree: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _check_imports_from(tree: Path) -> None:
    """The editable install points at the real tree; make sure the copy wins."""
    done = subprocess.run(
        [sys.executable, "-c", "import worker; print(worker.__file__)"],
        cwd=tree, env=_env(tree), capture_output=True, text=True, check=True,
    )  # fmt: skip
    where = Path(done.stdout.strip()).resolve()
    if tree.resolve() not in where.parents:
        raise RunnerError(f"the copy imports worker from {where}, not from {tree}")


Outcomes = dict[str, tuple[str, str]]


def run_tests(tree: Path, tests: Sequence[str], timeout_s: float | None) -> Outcomes:
    """Run `tests` in `tree`; node id -> (PASSED, FAILED, ERROR or SKIPPED, pytest's reason).

    A test missing from the result was not run."""
    _check_imports_from(tree)
    results = tree.parent / "results.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "--tb=line", "-p", "no:cacheprovider",
           "-o", "addopts=", f"--junit-xml={results}", *tests]  # fmt: skip
    if timeout_s is not None:
        cmd.append(f"--timeout={timeout_s:g}")
    try:
        done = subprocess.run(cmd, cwd=tree, env=_env(tree), capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_S)  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise RunnerError(f"pytest ran past {RUN_TIMEOUT_S}s: {' '.join(tests)}") from exc
    if done.returncode not in (0, 1) or not results.exists():  # interrupted, internal error...
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise RunnerError(f"pytest exited {done.returncode}:\n{tail}")
    return read_results(results)


def read_results(path: Path) -> Outcomes:
    """pytest's JUnit XML: node id -> (outcome, reason)."""
    outcomes: Outcomes = {}
    for case in ElementTree.parse(path).iter("testcase"):
        module, name = case.get("classname", ""), case.get("name", "")
        node = f"{module.replace('.', '/')}.py::{name}"
        outcome, reason = "PASSED", ""
        for tag, label in (("failure", "FAILED"), ("error", "ERROR"), ("skipped", "SKIPPED")):
            if (found := case.find(tag)) is not None:
                outcome, reason = label, found.get("message", "")
                break
        if node in outcomes and outcome == "PASSED":
            continue  # a teardown error is its own testcase entry: keep the worse outcome
        outcomes[node] = (outcome, reason.splitlines()[0] if reason else "")
    return outcomes


def _outcome(outcomes: Outcomes, test: str) -> str:
    return outcomes.get(test, ("not run", ""))[0]


def judge(tally: Tally, outcomes: Outcomes) -> None:
    tally.runs += 1
    tally.errors.extend(f"{t}: {' '.join(outcomes.get(t, ('not run',)))}" for t in tally.tests
                        if _outcome(outcomes, t) not in ("PASSED", "FAILED"))  # fmt: skip
    failed = [t for t in tally.tests if _outcome(outcomes, t) == "FAILED"]
    tally.failed.update(failed)
    for t in failed:
        tally.why.setdefault(t, set()).add(outcomes[t][1][:200])
    if failed:
        tally.killed += 1


def baseline(tests: Iterable[str], workdir: Path, timeout_s: float | None) -> None:
    """The tests must pass on the unpatched code, or a kill means nothing."""
    wanted = sorted(set(tests))
    tree = copy_tree(workdir)
    try:
        outcomes = run_tests(tree, wanted, timeout_s)
    finally:
        shutil.rmtree(tree.parent, ignore_errors=True)
    bad = [f"{t}: {' '.join(outcomes.get(t, ('not run',)))}" for t in wanted
           if _outcome(outcomes, t) != "PASSED"]  # fmt: skip
    if bad:
        raise RunnerError("the tests do not pass without a mutant:\n  " + "\n  ".join(bad))


def run_mutant(mutant: Mutant, tests: Sequence[str], workdir: Path,
               timeout_s: float | None) -> tuple[Outcomes, float]:  # fmt: skip
    """One run: a fresh copy, the patch, the tests; their outcomes and the time taken."""
    started = time.monotonic()
    tree = copy_tree(workdir)
    try:
        apply_patch(mutant, tree)
        return run_tests(tree, tests, timeout_s), time.monotonic() - started
    finally:
        shutil.rmtree(tree.parent, ignore_errors=True)


def report(tallies: Sequence[Tally], why: bool = False) -> str:
    rows = [("mutant", "killed", "test", "failed", "s/run")]
    for t in tallies:
        per_run = f"{t.seconds / t.runs:.0f}" if t.runs else "-"
        for i, test in enumerate(t.tests):
            name = t.mutant.name if i == 0 else ""
            killed = (f"{'yes' if t.killed == t.runs else 'NO'} {t.killed}/{t.runs}"
                      if i == 0 else "")  # fmt: skip
            rows.append((name, killed, test.split("::", 1)[1], f"{t.failed[test]}/{t.runs}",
                         per_run if i == 0 else ""))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]  # fmt: skip
    for t in tallies:
        lines.extend(f"error: {t.mutant.name}: {e}" for e in t.errors)
    if why:
        for t in tallies:
            for test, reasons in t.why.items():
                lines.extend(f"why: {t.mutant.name}: {test.split('::', 1)[1]}: {r}"
                             for r in sorted(reasons))  # fmt: skip
    return "\n".join(lines)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tests.mutants", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("names", nargs="*", help="mutants to run (default: all)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per mutant (default 1)")
    ap.add_argument("--unit", action="store_true", help="only each mutant's unit tests")
    ap.add_argument("--jobs", type=int, default=1, help="mutant runs at once (default 1)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per test")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unpatched run")
    ap.add_argument("--check", action="store_true", help="only check that the patches apply")
    ap.add_argument("--list", action="store_true", help="print the table and exit")
    ap.add_argument("--why", action="store_true", help="print why each test failed")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    try:
        mutants = [by_name(n) for n in args.names] if args.names else list(MUTANTS)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    if args.list:
        for m in mutants:
            print(f"{m.name}: {m.breaks}")
            print("".join(f"    {t}\n" for t in m.tests), end="")
        return 0
    tallies = [Tally(m, m.unit_tests() if args.unit else m.tests) for m in mutants]
    tallies = [t for t in tallies if t.tests]
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        workdir = Path(tmp)
        try:
            if args.check:
                tree = copy_tree(workdir)
                for m in mutants:
                    apply_patch(m, tree)
                    subprocess.run(["git", "apply", "-R", str(m.patch)], cwd=tree, check=True)
                print(f"all {len(mutants)} patches apply")
                return 0
            if not args.no_baseline:
                baseline((test for t in tallies for test in t.tests), workdir, args.timeout)
            runs = [t for _ in range(args.repeat) for t in tallies]
            with ThreadPoolExecutor(max(args.jobs, 1)) as pool:
                futures = [(t, pool.submit(run_mutant, t.mutant, t.tests, workdir, args.timeout))
                           for t in runs]  # fmt: skip
                for tally, future in futures:
                    outcomes, seconds = future.result()
                    before = tally.killed
                    judge(tally, outcomes)
                    tally.seconds += seconds
                    print(f"{tally.mutant.name}: run {tally.runs}: "
                          f"{'killed' if tally.killed > before else 'SURVIVED'} ({seconds:.0f}s)",
                          file=sys.stderr, flush=True)  # fmt: skip
        except RunnerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    print(report(tallies, args.why))
    if any(t.errors for t in tallies):
        return 2
    return 0 if all(t.killed == t.runs for t in tallies) else 1
