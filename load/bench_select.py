"""Which throughput rows a bench run measures: `--rows` and `--build` of `python -m load bench`.

`--rows TEXT` (repeatable) keeps the rows whose name contains one of the texts, and the
rows they are compared with (so every ratio is still computed within the run): e.g.
`--rows librdkafka --rows confluent` for the librdkafka client's rows alone.

`--build LABEL=DIR` adds, for every worker row kept, the same row with the worker run from
another source tree (`git worktree add DIR COMMIT`), named "LABEL: row", in the same
interleaved rounds: before and after a change measured in one run. A build's row is
compared with that build's own row when its baseline is a worker row (Lambda-style
against the native no-op), else with the same raw loop.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any


def keep_rows(contenders: list[Any], rows: list[str] | None) -> list[Any]:
    """The contenders named by `rows` (substrings), and the baselines they need."""
    if not rows:
        return contenders
    by_name = {c.name: c for c in contenders}
    wanted = {c.name for c in contenders if any(text in c.name for text in rows)}
    while missing := {by_name[n].baseline for n in wanted} - wanted:
        wanted |= missing
    return [c for c in contenders if c.name in wanted]


def add_builds(contenders: list[Any], builds: list[str]) -> list[Any]:
    """Each worker contender again for every LABEL=DIR build, right after its own row."""
    out = []
    workers = {c.name for c in contenders if c.kind == "worker"}
    for c in contenders:
        out.append(c)
        if c.kind != "worker":
            continue
        for spec in builds:
            label, _, where = spec.partition("=")
            base = f"{label}: {c.baseline}" if c.baseline in workers else c.baseline
            out.append(replace(c, name=f"{label}: {c.name}", baseline=base, build=Path(where)))
    return out
