"""The driver's memory on HowTo100M-size sources, and the memory and writing time of real builds.

Offline mode (default): a build of N videos whose stage fails each one at once.

The stage stands in for the video stage on a machine with no network (every download fails), so what is
measured is the driver's side of a build: reading a HowTo100M_v1.csv-layout source, the records handed
to Ray, Ray Data's bookkeeping, the group buffer and the writer. Each size runs in a process of its own;
its resident memory is sampled through the run. Past 10,000 videos a Ray Data block holds several
(ray_runner.MAX_INPUT_BLOCKS), so both default sizes have the same number of blocks and the difference
between them is what each further video costs the driver.

Real mode (--real): whole builds (configs/tiny.yaml, every stage, ASR on, every layout) of N and 3N
long generated videos with speech (copies of one 4-minute video of 3-second shots under other names),
each in a process of its own. Reported per size: the driver's peak RSS, the largest peak RSS of any one
Ray worker process (sampled every 0.25 s), and the driver's seconds inside CorpusWriter.write_group as a
share of the build. Flat memory in N is the target (issue 22), and writing under 5% of the build.

Usage: python bench/bench_scale.py --out bench/results/scale.json [--videos 20000 100000]
       python bench/bench_scale.py --real --out bench/results/scale_real.json [--real-videos 16 48]
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

import psutil

from cosmo_data.cli import TINY_CONFIG
from cosmo_data.pipeline import generated_media
from cosmo_data.pipeline.build import build
from cosmo_data.pipeline.writer import CorpusWriter
from cosmo_data.schemas.config import BuildConfig, load_config
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


LONG_VIDEO_S = 240
SHOT_S = 3.0


def long_video(folder: Path) -> Path:
    """One 4-minute how-to-like video: 3-second shots, a sentence of speech every few shots."""
    path = folder / "long.mp4"
    shots = int(LONG_VIDEO_S / SHOT_S)
    speech = [f"Step {k + 1}: hold the part steady and turn it a quarter to the left." for k in range(shots // 4)]
    generated_media.make_sample_video(
        path,
        segments=[SHOT_S] * shots,
        transitions=[generated_media.CUT] * (shots - 1),
        size=(320, 180),
        fps=25,
        speech=speech,
    )
    return path


def worker_peak_mb(peaks: dict[int, float]) -> None:
    """Largest RSS seen so far per Ray worker process (their command lines start with ray::)."""
    for child in psutil.Process().children(recursive=True):
        try:
            if child.cmdline()[:1] and child.cmdline()[0].startswith("ray::"):
                peaks[child.pid] = max(peaks.get(child.pid, 0.0), child.memory_info().rss / 1e6)
        except psutil.Error:
            continue


def run_real(videos: int, scratch: Path) -> dict:
    video = long_video(scratch)
    folder = scratch / "videos"
    folder.mkdir()
    for k in range(videos):
        (folder / f"howto_{k:04d}.mp4").symlink_to(video)
    config = load_config(TINY_CONFIG, {"output.videos_per_shard": 8})
    written_s = 0.0
    write_group = CorpusWriter.write_group

    def timed_write(self, group, records):
        nonlocal written_s
        started = time.perf_counter()
        try:
            return write_group(self, group, records)
        finally:
            written_s += time.perf_counter() - started

    CorpusWriter.write_group = timed_write
    workers: dict[int, float] = {}
    driver: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.25):
            driver.append(resident_mb())
            worker_peak_mb(workers)

    threading.Thread(target=sample, daemon=True).start()
    started = time.perf_counter()
    result = build([folder], scratch / "out", config)
    wall_s = time.perf_counter() - started
    done.set()
    return {
        "videos": videos,
        "video_s": LONG_VIDEO_S,
        "ok": result.ok,
        "wall_s": round(wall_s, 1),
        "driver_peak_rss_mb": round(max(driver)),
        "worker_peak_rss_mb": round(max(workers.values())),
        "driver_write_s": round(written_s, 2),
        "driver_write_fraction": round(written_s / wall_s, 4),
    }


def in_process(flag: str, videos: int) -> dict:
    done = subprocess.run([sys.executable, __file__, flag, str(videos)], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def real_report(sizes: list[int]) -> dict:
    runs = [in_process("--run-real", n) for n in sizes]
    small, large = runs[0], runs[-1]
    return {
        "runs": runs,
        "driver_peak_growth_mb": large["driver_peak_rss_mb"] - small["driver_peak_rss_mb"],
        "worker_peak_growth_mb": large["worker_peak_rss_mb"] - small["worker_peak_rss_mb"],
        "driver_write_fraction_max": max(r["driver_write_fraction"] for r in runs),
        "meets_write_target": all(r["driver_write_fraction"] < 0.05 for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/scale.json"))
    parser.add_argument("--videos", type=int, nargs=2, default=[20_000, 100_000], metavar=("SMALL", "LARGE"))
    parser.add_argument("--real", action="store_true", help="real builds of long videos instead")
    parser.add_argument("--real-videos", type=int, nargs=2, default=[16, 48], metavar=("SMALL", "LARGE"))
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)  # one size, in this process
    parser.add_argument("--run-real", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run_one(args.run)))
        return
    if args.run_real:
        with tempfile.TemporaryDirectory(prefix="cosmo_bench_real_") as scratch:
            print(json.dumps(run_real(args.run_real, Path(scratch))))
        return
    if args.real:
        report = real_report(args.real_videos)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))
        return
    small, large = runs = [in_process("--run", n) for n in args.videos]
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
