"""Whole `build` (configs/tiny.yaml, embedded Ray) of one 20-minute video vs PySceneDetect's detect() alone.

Both run in the same process run on the same cached file, detect() first; the JSON reports the ratio
build / detect (wall seconds, Ray's start-up included) and where the build's time went per stage. Two
encodings of the same footage (640x360, 25 fps, a shot every ~20 s, cuts and dissolves, speech):
  upload     x264 veryfast: High profile, CABAC, B-frames, as uploads and YouTube's H.264 formats are
             (the same encoding bench_video.py uses); the issue's target is judged on this one
  baseline   x264 ultrafast: Constrained Baseline, no B-frames, so every frame is a reference frame
             and must be decoded - the worst case for our decoder, reported beside it

Usage: python bench/bench_build.py --out bench/results/build.json [--minutes 20] [--encodings upload baseline]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import duckdb
from bench_video import cached_video, time_detect
from cosmo_data.cli import TINY_CONFIG
from cosmo_data.pipeline import samples
from cosmo_data.pipeline.build import build
from cosmo_data.pipeline.config import load_config

PRESETS = {"upload": "veryfast", "baseline": "ultrafast"}


def long_video(minutes: float, encoding: str) -> Path:
    shots = max(2, int(minutes * 60 / 20))
    transitions = [samples.DISSOLVE if i % 3 == 2 else samples.CUT for i in range(shots - 1)]
    speech = [f"Step {i + 1}: keep going with the next part of the job." for i in range(0, shots, 2)]
    return cached_video(f"long_{minutes:g}min_{encoding}.mp4", segments=[20.0] * shots, transitions=transitions,
                        size=(640, 360), fps=25, speech=speech, speech_gap_s=30.0, preset=PRESETS[encoding])


def time_build(video: Path) -> tuple[float, dict]:
    work = Path(tempfile.mkdtemp(prefix="cosmo_bench_"))
    try:
        source = work / "sources.txt"
        source.write_text(f"{video}\n")
        started = time.perf_counter()
        result = build([source], work / "out", load_config(TINY_CONFIG))
        wall = time.perf_counter() - started
        [(status, timings)] = duckdb.sql(
            f"SELECT status, timings FROM read_parquet('{work / 'out' / 'videos'}/*.parquet')"
        ).fetchall()
        stages = {stage: round(seconds, 2) for stage, seconds in sorted(timings.items())}
        return wall, {"ok": result.ok, "status": status, "stage_seconds": stages}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/build.json"))
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--encodings", nargs="+", choices=sorted(PRESETS), default=["upload", "baseline"])
    args = parser.parse_args()
    results = {}
    for encoding in args.encodings:
        video = long_video(args.minutes, encoding)
        video.read_bytes()  # page cache warm for both alike
        detect_s = time_detect(video)[0].wall
        build_s, details = time_build(video)
        results[encoding] = {
            "file": video.name,
            "x264_preset": PRESETS[encoding],
            "bytes": video.stat().st_size,
            "seconds": {"pyscenedetect_detect": round(detect_s, 2), "cosmo_build": round(build_s, 2)},
            "ratio_build_over_detect": round(build_s / detect_s, 3),
            "meets_target": build_s <= detect_s,
            "build": details,
        }
    report = {
        "video": {"minutes": args.minutes, "size": "640x360", "fps": 25},
        "config": "configs/tiny.yaml",
        "target": "cosmo_build <= pyscenedetect_detect on the upload encoding",
        "encodings": results,
        "cpus": os.cpu_count(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
