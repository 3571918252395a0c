"""The driver's memory on HowTo100M-size sources: a build of N videos whose stage fails each one at once.

The stage stands in for the video stage on a machine with no network (every download fails), so what is
measured is the driver's side of a build: reading a HowTo100M_v1.csv-layout source, the records handed
to Ray, Ray Data's bookkeeping, the group buffer and the writer. Each size runs in a process of its own;
its resident memory is sampled through the run. Past 10,000 videos a Ray Data block holds several
(ray_runner.MAX_INPUT_BLOCKS), so both default sizes have the same number of blocks and the difference
between them is what each further video costs the driver.

Usage: python bench/bench_scale.py --out bench/results/scale.json [--videos 20000 100000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cosmo_data.pipeline.build import build
from cosmo_data.schemas.config import BuildConfig
from cosmo_data.schemas.records import DOWNLOAD_FAILED
from cosmo_data.stages.base import Resources

HOWTO100M_VIDEOS = 1_238_911


class OfflineVideoStage:
    """The video stage's place and resources; fails every video as a download with no network would."""

    name = "video"
    resources = Resources(cpus=1, concurrency=2)
    batch_size = 1

    def setup(self) -> None:
        pass

    def process(self, batch: list) -> list:
        for record in batch:
            record.fail(DOWNLOAD_FAILED, "no network")
        return batch


def resident_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 1e6


def run_one(videos: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="cosmo_bench_scale_") as scratch:
        source = Path(scratch) / "HowTo100M_v1.csv"
        rows = "".join(f"v{i:010d},Food and Entertaining,Desserts,{i % 100},{i % 23000}\n" for i in range(videos))
        source.write_text("video_id,category_1,category_2,rank,task_id\n" + rows)
        config = BuildConfig.model_validate({"output": {"videos_per_shard": 1000, "formats": ["native"]}})
        samples: list[float] = []
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.5):
                samples.append(resident_mb())

        threading.Thread(target=sample, daemon=True).start()
        started = time.perf_counter()
        result = build([source], Path(scratch) / "out", config, stages_factory=lambda _: [OfflineVideoStage()])
        wall_s = time.perf_counter() - started
        done.set()
    return {
        "videos": videos,
        "failed_as_expected": result.failures.get(DOWNLOAD_FAILED, 0),
        "wall_s": round(wall_s, 1),
        "videos_per_s": round(videos / wall_s, 1),
        "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3),
        "driver_rss_mid_run_mb": round(samples[len(samples) // 2]) if samples else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/scale.json"))
    parser.add_argument("--videos", type=int, nargs=2, default=[20_000, 100_000], metavar=("SMALL", "LARGE"))
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)  # one size, in this process
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run_one(args.run)))
        return
    runs = []
    for videos in args.videos:
        done = subprocess.run(
            [sys.executable, __file__, "--run", str(videos)], check=True, capture_output=True, text=True
        )
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    small, large = runs
    per_1000 = (large["driver_peak_rss_mb"] - small["driver_peak_rss_mb"]) / (
        (large["videos"] - small["videos"]) / 1000
    )
    report = {
        "runs": runs,
        "driver_mb_per_1000_videos": round(per_1000, 2),
        "driver_peak_mb_projected_for_howto100m": round(
            large["driver_peak_rss_mb"] + per_1000 * (HOWTO100M_VIDEOS - large["videos"]) / 1000
        ),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
