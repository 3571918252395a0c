"""Whole `build` (configs/tiny.yaml, embedded Ray) of one long video vs PySceneDetect's detect() alone.

Both are measured in the same run on the same file; the JSON reports the ratio build / detect.
Usage: python bench/bench_build.py --out bench/results/build.json [--minutes 20]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from cosmo_data.cli import TINY_CONFIG
from cosmo_data.pipeline import samples
from cosmo_data.pipeline.build import build
from cosmo_data.pipeline.config import load_config

CACHE = Path(__file__).resolve().parent / ".cache"


def long_video(minutes: float) -> Path:
    """A realistic long video: 640x360, 25 fps, a shot every ~20 s, cuts and dissolves, speech-like audio."""
    path = CACHE / f"long_{minutes:g}min.mp4"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    shots = max(2, int(minutes * 60 / 20))
    transitions = [samples.DISSOLVE if i % 3 == 2 else samples.CUT for i in range(shots - 1)]
    speech = [f"Step {i + 1}: keep going with the next part of the job." for i in range(0, shots, 2)]
    partial = path.with_suffix(".partial.mp4")
    samples.make_sample_video(partial, segments=[20.0] * shots, transitions=transitions, size=(640, 360), fps=25,
                              speech=speech, speech_gap_s=30.0)
    partial.rename(path)
    samples.ground_truth_path(partial).rename(samples.ground_truth_path(path))
    return path


def time_detect(video: Path) -> float:
    from scenedetect import ContentDetector, detect

    started = time.perf_counter()
    detect(str(video), ContentDetector())
    return time.perf_counter() - started


def time_build(video: Path) -> tuple[float, dict]:
    work = Path(tempfile.mkdtemp(prefix="cosmo_bench_"))
    try:
        source = work / "sources.txt"
        source.write_text(f"{video}\n")
        started = time.perf_counter()
        result = build([source], work / "out", load_config(TINY_CONFIG))
        wall = time.perf_counter() - started
        timings = json.loads((work / "out" / "build.json").read_text())
        return wall, {"ok": result.ok, "failures": result.failures, "build_json": timings}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("bench/results/build.json"))
    parser.add_argument("--minutes", type=float, default=20.0)
    args = parser.parse_args()
    video = long_video(args.minutes)
    detect_s = time_detect(video)
    build_s, details = time_build(video)
    report = {
        "video": {"minutes": args.minutes, "size": "640x360", "fps": 25},
        "config": "configs/tiny.yaml",
        "seconds": {"pyscenedetect_detect": round(detect_s, 2), "cosmo_build": round(build_s, 2)},
        "ratio_build_over_detect": round(build_s / detect_s, 3),
        "details": details,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
