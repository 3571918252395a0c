"""Where a build's time goes, from the trace a build writes with COSMO_DATA_TRACE set (pipeline/ray_runner.py).

The trace holds one JSON line per worker setup, per stage call (start, end, its videos), per record back
at the driver (arrival, then writing), and Ray's start and stop. From it, for each stage: its busy
seconds, and for each pool its workers' idle seconds (from their first setup to the build's end, less
their busy time); for the driver, its seconds of writing. Queue depth over time: per pool, the videos
ready for it (the previous pool, or the input for the first, handed them on) and not yet taken by one
of its workers. `timeline_svg` draws the whole run: one lane per process, one bar per setup or call,
and the queues below.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

COLOURS = {
    "setup": "#bbbbbb",
    "video": "#1f77b4",
    "asr": "#ff7f0e",
    "caption": "#2ca02c",
    "document": "#9467bd",
    "clip_score": "#d62728",
    "assign": "#8c564b",
    "shard_samples": "#e377c2",
    "write": "#7f7f7f",
    "ray": "#17becf",
}


def read_trace(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pools_of(events: list[dict]) -> list[list[str]]:
    """The stages of each pool in pipeline order, from which stages shared a process."""
    by_pid: dict[int, list[str]] = defaultdict(list)
    for event in events:
        if event["event"] == "setup" and event["stage"] not in by_pid[event["pid"]]:
            by_pid[event["pid"]].append(event["stage"])
    pools: list[list[str]] = []
    for stages in by_pid.values():
        if stages not in pools:
            pools.append(stages)
    order = {"video": 0, "asr": 1, "caption": 2, "document": 3, "clip_score": 4, "assign": 5, "shard_samples": 6}
    return sorted(pools, key=lambda stages: order.get(stages[0], 99))


def summarize(events: list[dict], started: float, ended: float) -> dict:
    """Busy and idle seconds per stage and pool, the driver's writing, queue depth over time."""
    pools = pools_of(events)
    calls = [e for e in events if e["event"] == "call"]
    setups = [e for e in events if e["event"] == "setup"]
    records = [e for e in events if e["event"] == "record"]
    run = next((e["start"] for e in events if e["event"] == "run"), started)
    stages: dict[str, dict] = {}
    for call in calls:
        row = stages.setdefault(call["stage"], {"busy_s": 0.0, "calls": 0, "videos": 0})
        row["busy_s"] += call["end"] - call["start"]
        row["calls"] += 1
        row["videos"] += len(call["videos"])
    pool_rows = []
    queues = {}
    for stages_of_pool in pools:
        pids = {e["pid"] for e in setups if e["stage"] == stages_of_pool[0]}
        busy = sum(c["end"] - c["start"] for c in calls if c["pid"] in pids)
        setup = sum(s["end"] - s["start"] for s in setups if s["pid"] in pids)
        alive = sum(ended - min(s["start"] for s in setups if s["pid"] == pid) for pid in pids)
        first_call = min((c["start"] for c in calls if c["pid"] in pids), default=ended)
        pool_rows.append(
            {
                "stages": stages_of_pool,
                "workers": len(pids),
                "setup_s": round(setup, 2),
                "busy_s": round(busy, 2),
                "idle_s": round(alive - setup - busy, 2),
                "first_call_after_s": round(first_call - started, 2),
            }
        )
        queues[stages_of_pool[0]] = queue_depth(calls, pools, stages_of_pool, run, started)
    writing = sum(r["end"] - r["start"] for r in records)
    ray = {e["event"]: round(e["end"] - e["start"], 2) for e in events if e["event"] in ("ray_init", "ray_shutdown")}
    return {
        "stages": {name: {**row, "busy_s": round(row["busy_s"], 2)} for name, row in stages.items()},
        "pools": pool_rows,
        "driver_writing_s": round(writing, 2),
        "ray_s": ray,
        "first_record_after_s": round(min((r["start"] for r in records), default=ended) - started, 2),
        "queue_depth": queues,
    }


def queue_depth(calls: list[dict], pools: list[list[str]], pool: list[str], run: float, started: float) -> list:
    """[(seconds since the build started, videos waiting for this pool)] at every change."""
    index = pools.index(pool)
    first_stage_calls = [c for c in calls if c["stage"] == pool[0]]
    taken = {v: c["start"] for c in first_stage_calls for v in c["videos"]}
    if index == 0:
        ready = {v: run for v in taken}
    else:
        last = pools[index - 1][-1]
        ready = {v: c["end"] for c in calls if c["stage"] == last for v in c["videos"]}
    changes = [(t, +1) for t in ready.values()] + [(t, -1) for t in taken.values()]
    depth = 0
    points = []
    for at, step in sorted(changes):
        depth += step
        points.append((round(at - started, 2), depth))
    return points


def timeline_svg(events: list[dict], started: float, ended: float, title: str) -> str:
    """One lane per process (the driver first), a bar per setup, call or write; queues underneath."""
    pools = pools_of(events)
    lanes: list[tuple[str, int]] = [("driver", -1)]
    for stages in pools:
        pids = sorted({e["pid"] for e in events if e["event"] == "setup" and e["stage"] == stages[0]})
        lanes += [
            (f"{'+'.join(stages[:2])}{'+...' if len(stages) > 2 else ''} #{n + 1}", pid) for n, pid in enumerate(pids)
        ]
    driver_pid = next((e["pid"] for e in events if e["event"] == "run"), None)
    span = max(ended - started, 1e-3)
    left, width, lane_h = 170, 900, 26
    queue_top = 40 + lane_h * len(lanes) + 30
    queue_h = 90
    height = queue_top + queue_h + 60
    x = lambda t: left + width * (t - started) / span  # noqa: E731
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 20}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{left}" y="18" font-size="13">{title}</text>',
    ]
    for second in range(0, int(span) + 1, 10):
        gx = x(started + second)
        parts.append(f'<line x1="{gx:.1f}" y1="28" x2="{gx:.1f}" y2="{queue_top + queue_h}" stroke="#eee"/>')
        parts.append(f'<text x="{gx:.1f}" y="{queue_top + queue_h + 14}" text-anchor="middle">{second} s</text>')
    for row, (label, pid) in enumerate(lanes):
        top = 32 + row * lane_h
        parts.append(f'<text x="{left - 6}" y="{top + 15}" text-anchor="end">{label}</text>')
        for event in events:
            mine = event["pid"] == (driver_pid if pid == -1 else pid)
            kind = {"setup": "setup", "call": event.get("stage"), "record": "write"}.get(event["event"])
            if pid == -1 and event["event"] in ("ray_init", "ray_shutdown"):
                kind, mine = "ray", True
            if not mine or kind is None:
                continue
            x0, x1 = x(event["start"]), x(event["end"])
            parts.append(
                f'<rect x="{x0:.1f}" y="{top}" width="{max(x1 - x0, 0.8):.1f}" height="{lane_h - 6}" '
                f'fill="{COLOURS.get(kind, "#444")}"><title>{kind} {event.get("videos", "")} '
                f"{event['end'] - event['start']:.2f} s</title></rect>"
            )
    queues = summarize(events, started, ended)["queue_depth"]
    deepest = max((d for points in queues.values() for _, d in points), default=1) or 1
    parts.append(f'<text x="{left - 6}" y="{queue_top + 10}" text-anchor="end">videos waiting</text>')
    for stage, points in queues.items():
        path = f"M{left},{queue_top + queue_h}"
        for at, depth in points:
            y = queue_top + queue_h - queue_h * depth / deepest
            path += f" H{x(started + at):.1f} V{y:.1f}"
        parts.append(f'<path d="{path}" fill="none" stroke="{COLOURS.get(stage, "#444")}" stroke-width="1.5"/>')
    legend_y = height - 22
    for n, (kind, colour) in enumerate(COLOURS.items()):
        lx = left + n * 85
        parts.append(f'<rect x="{lx}" y="{legend_y}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{lx + 14}" y="{legend_y + 9}">{kind}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
