"""The driver's memory on HowTo100M-size sources, and the memory and writing time of real builds.

Offline mode (default): a build of N videos whose stage fails each one at once.

The stage stands in for the video stage on a machine with no network (every download fails), so what is
measured is the driver's side of a build: reading a HowTo100M_v1.csv-layout source, the records handed
to Ray, Ray Data's bookkeeping, the group buffer and the writer. Each size runs in a process of its own;
its resident memory is sampled through the run. Past 10,000 videos a Ray Data block holds several
(ray_runner.MAX_INPUT_BLOCKS), so both default sizes have the same number of blocks and the difference
between them is what each further video costs the driver.

Real mode (--real): whole builds (configs/tiny.yaml, every stage, ASR on, every layout) of several
sizes (default 16, 32 and 48) of long generated videos with speech (copies of one video of 3-second
shots, 4 minutes unless --video-s says otherwise, under other names), each in a process of its own.
Every process of the build is read every 0.5 s from /proc/PID/smaps and counted under its kind: the
driver; the video-stage actors; their children (the forkserver, each video's decode process, ffmpeg);
the model actor (the one that maps torch: asr, caption, document, clip_score, assign, shard_samples);
and Ray's own processes (raylet, GCS, agents, Ray Data's helper actors, idle workers, and the workers
that run the short tasks making a group's tars, write_shards, too brief to be told apart reliably). Reported per kind, for its largest process: peak RSS, peak heap,
peak private memory and the object-store pages mapped into it.

The verdict is on heap: the anonymous pages (Python objects, allocator arenas, numpy and torch
buffers), where anything kept per video would pile up. Not on RSS: Ray's object store is one
shared-memory file (/dev/shm/plasma*) that the driver and every worker map, and each page of it a
process has touched stays in its RSS while the mapping lives, also after the object in it is freed;
a video actor that writes ~12.5 MB per 4-minute video there (its PCM and cosmo mp4) shows RSS climbing
through the run while its own memory is flat. Those pages are the raylet's, shared, counted once for
the machine, and bounded by the store's size: reported beside (peak_object_store_mb), never as a
process's growth.
Private memory (USS less the object store) is reported too; it also moves with how many other
processes happen to map the same libraries.

The model actor takes whole Ray batches of MODEL_BATCH videos (tiny.yaml's caption and clip_score
batch_size, set to it here), so its peak is set by one batch's records, and a build smaller than a
batch has a smaller one: the sizes must be whole batches, or "growth" is only the batch filling up.
A fresh process's first batch also peaks lower than its later ones (glibc keeps what the first one
freed; docs/ARCHITECTURE.md, "Memory over many videos"), so the smallest default size is two batches.
Growth per added video is (peak at the largest size - peak at the smallest) / the videos between;
a kind is flat when its heap grows, over the whole range, by at most FLAT_TOLERANCE of its peak at the
smallest size or FLAT_FLOOR_MB, whichever is larger (a process's heap moves by a few MB with what
happens to be in flight). Beside memory: the driver's seconds inside CorpusWriter.write_group as a
share of the build (target under 5 %).

Usage: python bench/bench_scale.py --out bench/results/scale.json [--videos 20000 100000]
       python bench/bench_scale.py --real --out bench/results/scale_real.json [--real-videos 16 32 48] [--video-s 240]
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
from dataclasses import dataclass
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
# Videos per batch of the model actor (caption's and clip_score's batch_size; the actor's Ray batch is the
# largest of its stages'): every size measured is whole batches of it, so no size has a smaller batch.
MODEL_BATCH = 8
SHOT_S = 3.0


def long_video(folder: Path, seconds: float = LONG_VIDEO_S) -> Path:
    """One how-to-like video (4 minutes unless told): 3-second shots, a sentence of speech every few shots."""
    path = folder / "long.mp4"
    shots = int(seconds / SHOT_S)
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


PLASMA = "/dev/shm/plasma"  # Ray's object store: one shared-memory file, mapped by every Ray process
KINDS = ("driver", "video_worker", "video_children", "model_worker", "ray")
FLAT_TOLERANCE = 0.05
FLAT_FLOOR_MB = 20.0


@dataclass
class Reading:
    rss_kb: int = 0
    private_kb: int = 0  # pages no other process maps (USS), object-store pages left out
    heap_kb: int = 0  # anonymous pages: the heap, allocator arenas, numpy and torch buffers
    object_store_kb: int = 0  # object-store pages mapped into the process (shared, owned by the raylet)
    torch: bool = False


def read_smaps(pid: int) -> Reading:
    """One process's memory from /proc/PID/smaps, with the object store's pages told apart."""
    reading, mapping = Reading(), ""
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        key, _, rest = line.partition(" ")
        if not key.endswith(":"):  # a mapping's header: address range, perms, offset, dev, inode, path
            parts = line.split(maxsplit=5)
            mapping = parts[5] if len(parts) > 5 else ""
            reading.torch = reading.torch or "libtorch_cpu" in mapping
        elif key == "Rss:":
            reading.rss_kb += int(rest.split()[0])
            if mapping.startswith(PLASMA):
                reading.object_store_kb += int(rest.split()[0])
        elif key in ("Private_Clean:", "Private_Dirty:") and not mapping.startswith(PLASMA):
            reading.private_kb += int(rest.split()[0])
        elif key == "Anonymous:":  # the object store is shared memory, never anonymous
            reading.heap_kb += int(rest.split()[0])
    return reading


class BuildMemory:
    """Samples every process of this build (this one and its descendants) until stopped; kinds are told at
    the end, when it is known which actor loaded torch (a process's title changes as Ray reuses it)."""

    def __init__(self, interval_s: float = 0.5):
        self.interval_s = interval_s
        self.root = psutil.Process()
        self.peaks: dict[int, Reading] = {}  # per pid, each field's own peak
        self.titles: dict[int, set[str]] = {}
        self.lineage: dict[int, list[int]] = {}  # ancestors, nearest first
        self.driver_heap_kb: list[int] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> BuildMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._done.wait(self.interval_s):
            for process in [self.root, *self.root.children(recursive=True)]:
                try:
                    self._sample(process)
                except (psutil.Error, OSError):  # it ended between the listing and the read
                    continue

    def _sample(self, process: psutil.Process) -> None:
        pid = process.pid
        if pid not in self.lineage:
            self.lineage[pid] = [parent.pid for parent in process.parents()]
        self.titles.setdefault(pid, set()).add((process.cmdline() or [""])[0])
        now = read_smaps(pid)
        peak = self.peaks.setdefault(pid, Reading())
        peak.rss_kb = max(peak.rss_kb, now.rss_kb)
        peak.private_kb = max(peak.private_kb, now.private_kb)
        peak.heap_kb = max(peak.heap_kb, now.heap_kb)
        peak.object_store_kb = max(peak.object_store_kb, now.object_store_kb)
        peak.torch = peak.torch or now.torch
        if pid == self.root.pid:
            self.driver_heap_kb.append(now.heap_kb)

    def kind(self, pid: int) -> str:
        actors = {p for p, titles in self.titles.items() if any(t.startswith("ray::MapWorker") for t in titles)}
        if pid == self.root.pid:
            return "driver"
        if pid in actors:
            return "model_worker" if self.peaks[pid].torch else "video_worker"
        if any(parent in actors and not self.peaks[parent].torch for parent in self.lineage[pid]):
            return "video_children"
        return "ray"

    def by_kind(self) -> dict[str, dict]:
        """Per kind: its largest process's peaks, and how many processes it had."""
        report: dict[str, dict] = {}
        for kind in KINDS:
            peaks = [reading for pid, reading in self.peaks.items() if self.kind(pid) == kind]
            report[kind] = {
                "processes": len(peaks),
                "peak_rss_mb": round(max((r.rss_kb for r in peaks), default=0) / 1e3),
                "peak_heap_mb": round(max((r.heap_kb for r in peaks), default=0) / 1e3),
                "peak_private_mb": round(max((r.private_kb for r in peaks), default=0) / 1e3),
                "peak_object_store_mb": round(max((r.object_store_kb for r in peaks), default=0) / 1e3),
            }
        return report


def media_duration_s(path: Path) -> float:
    import av

    with av.open(str(path)) as container:
        return container.duration / av.time_base


def run_real(videos: int, video: Path, scratch: Path) -> dict:
    folder = scratch / "videos"
    folder.mkdir()
    for k in range(videos):
        (folder / f"howto_{k:04d}.mp4").symlink_to(video)
    overrides = {"output.videos_per_shard": 8}
    overrides |= {f"{stage}.resources.batch_size": MODEL_BATCH for stage in ("caption", "clip_score")}
    config = load_config(TINY_CONFIG, overrides)
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
    started = time.perf_counter()
    with BuildMemory() as memory:
        result = build([folder], scratch / "out", config)
    wall_s = time.perf_counter() - started
    return {
        "videos": videos,
        "video_s": round(media_duration_s(video), 1),
        "ok": result.ok,
        "wall_s": round(wall_s, 1),
        "memory": memory.by_kind(),
        "driver_heap_end_mb": round(memory.driver_heap_kb[-1] / 1e3) if memory.driver_heap_kb else None,
        "driver_write_s": round(written_s, 2),
        "driver_write_fraction": round(written_s / wall_s, 4),
    }


def in_process(flag: str, videos: int, *extra: str) -> dict:
    command = [sys.executable, __file__, flag, str(videos), *extra]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def growth(runs: list[dict], kind: str, measure: str) -> dict:
    small, large = runs[0], runs[-1]
    first, last = small["memory"][kind][measure], large["memory"][kind][measure]
    allowed = max(FLAT_TOLERANCE * first, FLAT_FLOOR_MB)
    return {
        "peaks_mb": [run["memory"][kind][measure] for run in runs],
        "growth_mb": last - first,
        "mb_per_added_video": round((last - first) / (large["videos"] - small["videos"]), 2),
        "allowed_growth_mb": round(allowed),
        "flat": last - first <= allowed,
    }


def real_report(sizes: list[int], video_s: float) -> dict:
    if any(n % MODEL_BATCH for n in sizes) or len(set(sizes)) < 2:
        raise SystemExit(f"--real-videos: two sizes or more, each whole model batches of {MODEL_BATCH} videos")
    with tempfile.TemporaryDirectory(prefix="cosmo_bench_real_video_") as folder:
        video = long_video(Path(folder), video_s)
        runs = []
        for videos in sorted(sizes):
            runs.append(in_process("--run-real", videos, "--video", str(video)))
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)  # a long bench: each size as it ends
    heap = {kind: growth(runs, kind, "peak_heap_mb") for kind in KINDS}
    return {
        "runs": runs,
        "tolerance": f"flat: each kind's peak heap at {runs[-1]['videos']} videos at most "
        f"{FLAT_TOLERANCE:.0%} (or {FLAT_FLOOR_MB:g} MB) above its peak at {runs[0]['videos']} videos",
        "heap_growth": heap,
        "private_growth": {kind: growth(runs, kind, "peak_private_mb") for kind in KINDS},
        "rss_growth": {kind: growth(runs, kind, "peak_rss_mb") for kind in KINDS},
        "flat": all(g["flat"] for g in heap.values()),
        "driver_write_fraction_max": max(r["driver_write_fraction"] for r in runs),
        "meets_write_target": all(r["driver_write_fraction"] < 0.05 for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/scale.json"))
    parser.add_argument("--videos", type=int, nargs=2, default=[20_000, 100_000], metavar=("SMALL", "LARGE"))
    parser.add_argument("--real", action="store_true", help="real builds of long videos instead")
    parser.add_argument("--real-videos", type=int, nargs="+", default=[16, 32, 48], metavar="N")
    parser.add_argument("--video-s", type=float, default=LONG_VIDEO_S, help="--real: length of the video")
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)  # one size, in this process
    parser.add_argument("--run-real", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--video", type=Path, help=argparse.SUPPRESS)  # the long video, made once
    args = parser.parse_args()
    if args.run:
        print(json.dumps(run_one(args.run)))
        return
    if args.run_real:
        with tempfile.TemporaryDirectory(prefix="cosmo_bench_real_") as scratch:
            print(json.dumps(run_real(args.run_real, args.video, Path(scratch))))
        return
    if args.real:
        report = real_report(args.real_videos, args.video_s)
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
