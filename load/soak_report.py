"""A soak's figures: the summary printed at the end, its JSON, and its PNG chart.

The chart has two panels on one time axis: each worker slot's RSS (a slot is one
place in the group; a restart puts a new process in it, so its line has a gap
where the slot was empty), and the handled and acknowledged rates per second.
Every injected fault is a vertical line, coloured by kind, on both panels.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from load.soak import SoakResult

COLOURS = {
    "kill9_worker": "tab:red",
    "sigterm_worker": "tab:green",
    "kill_broker": "tab:purple",
    "worker_exited": "black",
}


def rss_figures(result: SoakResult) -> dict[str, dict[str, float | None]]:
    """Per slot: RSS in MiB at the first and last sample it was alive, and its highest."""
    out: dict[str, dict[str, float | None]] = {}
    slots = sorted({slot for s in result.samples for slot in s.rss})
    for slot in slots:
        values = [s.rss[slot] for s in result.samples if s.rss.get(slot)]
        mib = [round(v / 2**20, 1) for v in values if v]
        out[slot] = {
            "start_mib": mib[0] if mib else None,
            "end_mib": mib[-1] if mib else None,
            "max_mib": max(mib) if mib else None,
        }
    return out


def summary(result: SoakResult) -> dict[str, object]:
    r, o = result.report, result.options
    return {
        "ok": result.ok,
        "seconds": o.seconds,
        "rate_per_s": o.rate,
        "devices": o.devices,
        "partitions": o.partitions,
        "workers": o.workers,
        "records_produced": r.produced,
        "handled": r.handled,
        "lost": len(r.lost),
        "duplicated": r.duplicated_records,
        "extra_handlings": r.extra_handlings,
        "max_multiplicity": r.max_multiplicity,
        "unexplained_duplicates": len(r.unexplained_duplicates),
        "order_violations": len(r.order_violations),
        "skipped": len(r.skipped),
        "committed_ahead": len(r.committed_ahead),
        "mismatched": len(r.mismatched),
        "unexpected": len(r.unexpected),
        "produced_out_of_order": len(r.produced_out_of_order),
        "producer_failures": len(result.producer_failures),
        "longest_gap_s": round(r.longest_gap_s, 2),
        "faults": result.faults,
        "fault_log": [
            {"at_s": i.at_s, "kind": i.kind, "target": i.target, "took_s": round(i.took_s, 2)}
            for i in result.injected
        ],
        "worker_exits": [{"pid": p, "code": c, "why": why} for p, c, why in result.exits],
        "rss": rss_figures(result),
        "drained": result.drained,
        "drain_s": round(result.drain_s, 1),
        "check_s": round(result.check_s, 1),
        "first_lost": [[x.key, x.seq, x.partition, x.offset] for x in r.lost[:10]],
        "first_order_violations": [
            [v.pid, v.partition, v.offset, v.key, v.previous, v.current]
            for v in r.order_violations[:10]
        ],
    }


def print_summary(doc: dict[str, object]) -> None:
    keys = ("records_produced", "handled", "lost", "duplicated", "extra_handlings",
            "unexplained_duplicates", "order_violations", "skipped", "committed_ahead")  # fmt: skip
    print("[soak] result: " + " ".join(f"{k}={doc[k]}" for k in keys), flush=True)
    print(f"[soak] faults injected: {doc['faults']}", flush=True)
    print(f"[soak] worker exits: {doc['worker_exits']}", flush=True)
    for slot, figures in dict(doc["rss"]).items():  # type: ignore[call-overload]
        print(f"[soak] RSS {slot}: {figures}", flush=True)
    print(f"[soak] drained={doc['drained']} in {doc['drain_s']}s; ok={doc['ok']}", flush=True)


def write(result: SoakResult, results_dir: Path, stamp: str) -> tuple[Path, Path]:
    """The JSON summary (with the samples) and the chart, as soak-STAMP.{json,png}."""
    results_dir.mkdir(parents=True, exist_ok=True)
    doc = summary(result)
    doc["samples"] = [
        {"t": round(s.t, 1), "acked": s.acked, "handled": s.handled,
         "rss_mib": {k: (round(v / 2**20, 1) if v else None) for k, v in s.rss.items()}}
        for s in result.samples
    ]  # fmt: skip
    json_path = results_dir / f"soak-{stamp}.json"
    json_path.write_text(json.dumps(doc, indent=1) + "\n")
    png_path = results_dir / f"soak-{stamp}.png"
    chart(result, png_path)
    return json_path, png_path


def chart(result: SoakResult, path: Path) -> None:
    import matplotlib  # the bench extra (pip install -e '.[bench]'); `make soak` installs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result.samples
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(11, 7))
    for slot in sorted({k for s in samples for k in s.rss}):
        xs = [s.t / 60 for s in samples]
        ys = [(s.rss[slot] / 2**20 if s.rss.get(slot) else float("nan")) for s in samples]
        top.plot(xs, ys, label=f"worker {slot}")
    top.set_ylabel("RSS (MiB)")
    top.legend(loc="upper left", fontsize="small")
    pairs = list(itertools.pairwise(samples))
    mids = [(b.t + a.t) / 120 for a, b in pairs]
    bottom.plot(mids, [(b.handled - a.handled) / (b.t - a.t) for a, b in pairs], label="handled/s")
    bottom.plot(mids, [(b.acked - a.acked) / (b.t - a.t) for a, b in pairs], label="acked/s",
                alpha=0.6)  # fmt: skip
    bottom.set_ylabel("records per second")
    bottom.set_xlabel("minutes")
    seen: set[str] = set()
    for i in result.injected:
        colour = COLOURS.get(i.kind, "grey")
        for ax in (top, bottom):
            label = i.kind if ax is bottom and i.kind not in seen else None
            ax.axvline(i.at_s / 60, color=colour, linestyle="--", linewidth=0.8, label=label)
        seen.add(i.kind)
    bottom.legend(loc="upper left", fontsize="small", ncol=3)
    r = result.report
    fig.suptitle(
        f"soak: {r.produced:,} records at {result.options.rate:,.0f}/s, "
        f"{len(result.injected)} faults; lost {len(r.lost)}, duplicated "
        f"{r.duplicated_records}, order violations {len(r.order_violations)}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
