"""Generated test and demo media with known ground truth (shot boundaries, spoken sentences).

Every video is built by one ffmpeg call (argument lists, never a shell) from lavfi sources that move
(zooms, pans, cellular automata, scrolling patterns), so scene detection has to tell motion from
transitions. Shots are joined by hard cuts, 1 s dissolves (xfade), 1 s fades through black (fade
out + fade in) or xfade's fadeblack. Speech is espeak-ng placed at known times. The ground truth is
written as JSON next to the video (`<name>.<ext>.json`).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path

TRANSITION_S = 1.0
CUT = "cut"
DISSOLVE = "dissolve"
FADE = "fade"  # fade out to black then fade in, half the transition each
FADEBLACK = "fadeblack"  # xfade's fadeblack
TRANSITIONS = (CUT, DISSOLVE, FADE, FADEBLACK)
AUDIO_RATE = 22050

# Visually distinct sources, each with motion. Sizes ({w}, {h}, doubled {w2}, {h2}), {fps}, {seed} and
# colours ({c0}, {c1}) are filled in per shot.
SHOT_SOURCES = (
    "testsrc2=size={w}x{h}:rate={fps}",
    "mandelbrot=size={w}x{h}:rate={fps}:maxiter=256:end_scale=0.05",
    "life=size={w}x{h}:rate={fps}:mold=40:seed={seed}:ratio=0.3:life_color=#40ff90:death_color=#702040"
    ":mold_color=#202060",
    "testsrc=size={w2}x{h2}:rate={fps},crop={w}:{h}:x='t*{w}/8':y='t*{h}/16'",
    "gradients=size={w}x{h}:rate={fps}:speed=0.02:seed={seed}:c0={c0}:c1={c1}:x0=0:y0=0:x1={w}:y1={h}",
    "smptehdbars=size={w}x{h}:rate={fps},hue=h=t*40",
    "cellauto=size={w}x{h}:rate={fps}:rule=30:seed={seed}:random_fill_ratio=0.4,colorchannelmixer=rr=0.2:gg=0.8:bb=1",
    "color=c=0x203050:size={w2}x{h}:rate={fps},drawbox=x={w}/2:y={h}/3:w={w}/4:h={h}/3:color=orange:t=fill,"
    "drawbox=x={w}*1.3:y={h}/2:w={w}/5:h={h}/4:color=white:t=fill,crop={w}:{h}:x='{w}/2+{w}/2*sin(t)'",
)
# Shots start this far into their source, past start-up effects (life's random fill settling).
SOURCE_WARMUP_S = 2.0
# Colours for sources that would otherwise pick random ones (not reproducible from a seed).
PALETTE = ("0xe63946", "0xf1faee", "0x2a9d8f", "0xe9c46a", "0x264653", "0xf4a261", "0x8338ec", "0x3a86ff")


@dataclass
class TruthBoundary:
    t_s: float
    kind: str  # "cut" or "gradual", as scene detection labels them
    transition: str  # one of TRANSITIONS


@dataclass
class SpokenSentence:
    text: str
    start_s: float
    end_s: float


@dataclass
class GroundTruth:
    path: str
    duration_s: float
    fps: float
    width: int
    height: int
    has_audio: bool
    boundaries: list[TruthBoundary] = field(default_factory=list)
    speech: list[SpokenSentence] = field(default_factory=list)

    def save(self) -> Path:
        target = ground_truth_path(Path(self.path))
        target.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")
        return target

    @classmethod
    def load(cls, video_path: Path) -> GroundTruth:
        data = json.loads(ground_truth_path(video_path).read_text(encoding="utf-8"))
        data["boundaries"] = [TruthBoundary(**b) for b in data["boundaries"]]
        data["speech"] = [SpokenSentence(**s) for s in data["speech"]]
        return cls(**data)


@dataclass
class BoundaryScore:
    true_positives: int
    false_positives: int
    false_negatives: int
    kinds_right: int  # matched boundaries whose kind ("cut"/"gradual") is right too

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 1.0

    @property
    def recall(self) -> float:
        truth = self.true_positives + self.false_negatives
        return self.true_positives / truth if truth else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def __add__(self, other: BoundaryScore) -> BoundaryScore:
        return BoundaryScore(
            self.true_positives + other.true_positives,
            self.false_positives + other.false_positives,
            self.false_negatives + other.false_negatives,
            self.kinds_right + other.kinds_right,
        )


# A detected boundary matches a true one this close (a gradual transition has no single right frame).
TOLERANCE_S = {"cut": 0.25, "gradual": 0.6}


def match_boundaries(truth: list[TruthBoundary], found: list[tuple]) -> list[tuple[int, int]]:
    """(truth index, found index) pairs: detected (t_s, kind, ...) boundaries matched one-to-one to the
    truth, closest pairs first, within TOLERANCE_S of the true boundary's kind."""
    pairs = sorted(
        (abs(t.t_s - f[0]), i, j)
        for i, t in enumerate(truth)
        for j, f in enumerate(found)
        if abs(t.t_s - f[0]) <= TOLERANCE_S[t.kind]
    )
    matched: list[tuple[int, int]] = []
    truth_used: set[int] = set()
    found_used: set[int] = set()
    for _, i, j in pairs:
        if i not in truth_used and j not in found_used:
            truth_used.add(i)
            found_used.add(j)
            matched.append((i, j))
    return matched


def score_boundaries(truth: list[TruthBoundary], found: list[tuple[float, str]]) -> BoundaryScore:
    """Detected (t_s, kind) boundaries against the truth (match_boundaries)."""
    matched = match_boundaries(truth, found)
    kinds_right = sum(truth[i].kind == found[j][1] for i, j in matched)
    return BoundaryScore(len(matched), len(found) - len(matched), len(truth) - len(matched), kinds_right)


def ground_truth_path(video_path: Path) -> Path:
    return video_path.with_name(video_path.name + ".json")


def file_arg(path: Path) -> str:
    """A path as an ffmpeg file argument: "file:" so that no name reads as an option or a protocol."""
    return "file:" + str(path)


def run_ffmpeg(args: list[str]) -> None:
    """Run ffmpeg quietly; on failure raise with ffmpeg's own last lines."""
    result = subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-y", *args], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg failed: {result.stderr.strip()[-2000:]}")


def make_sample_video(
    path: Path,
    *,
    segments: list[float],
    transitions: list[str],
    size: tuple[int, int] = (320, 240),
    fps: float = 25,
    speech: list[str] | None = None,
    audio: bool = True,
    seed: int = 0,
    speech_start_s: float = 0.5,
    speech_gap_s: float = 0.8,
    keyframe_interval_s: float = 2.0,
    preset: str = "ultrafast",
    footage: list[tuple[Path, float]] | None = None,
) -> GroundTruth:
    """Write a video of shots (`segments` = shot lengths in seconds) joined by `transitions`.

    Gradual transitions last TRANSITION_S; a dissolve or fadeblack overlaps the two shots, so the
    video is shorter than sum(segments) by TRANSITION_S per overlap. The container and codecs follow
    the suffix (.mp4/.mov/.mkv: H.264 + AAC, .webm: VP8 + Opus); `preset` is x264's (ultrafast keeps
    tests quick; slower presets add B-frames and CABAC, as real uploads have). `footage` gives each shot
    as (video file, start second) of real footage, scaled and cropped to `size`, instead of a generated
    pattern; each such shot must lie inside one shot of its source. Returns (and saves) the ground truth.
    """
    if footage is not None and len(footage) != len(segments):
        raise ValueError("need one (file, start) of footage per segment")
    if len(transitions) != len(segments) - 1:
        raise ValueError("need exactly one transition between each pair of segments")
    unknown = set(transitions) - set(TRANSITIONS)
    if unknown:
        raise ValueError(f"unknown transitions {sorted(unknown)}; use {TRANSITIONS}")
    # Whole frames only, so that the ground truth is exactly where the frames change.
    segments = [int(length * fps + 0.5) / fps for length in segments]
    _check_segment_lengths(segments, transitions)
    width, height = size
    duration = _duration(segments, transitions)

    with tempfile.TemporaryDirectory(prefix="cosmo_sample_") as scratch:
        spoken, speech_inputs = [], []
        if audio and speech:
            spoken, speech_inputs = _speak(speech, Path(scratch), speech_start_s, speech_gap_s, duration)
        inputs: list[str] = []
        for wav in speech_inputs:
            inputs += ["-i", file_arg(wav)]
        sources = None
        if footage is not None:  # inputs after the speech: the audio graph numbers speech from 0
            sources = [_footage_source(len(speech_inputs) + i, width, height, fps) for i in range(len(footage))]
            for (video, start_s), length in zip(footage, segments):
                inputs += ["-ss", f"{start_s:.3f}", "-t", f"{length + 0.5:.3f}", "-i", file_arg(video)]
        video_graph, boundaries, duration = _video_graph(segments, transitions, width, height, fps, seed, sources)
        graph = [video_graph]
        maps = ["-map", "[video]"]
        if audio:
            graph.append(_audio_graph(spoken, duration))
            # Opus takes fixed 20 ms frames at 48 kHz, which a filter graph output does not deliver.
            if path.suffix.lower() == ".webm":
                graph.append("[audio]aresample=48000,asetnsamples=n=960:p=0[audio_out]")
            maps += ["-map", "[audio_out]" if path.suffix.lower() == ".webm" else "[audio]"]
        run_ffmpeg(
            [
                *inputs,
                "-filter_complex",
                ";".join(graph),
                *maps,
                "-t",
                f"{duration:.3f}",
                *_codec_args(path, fps, keyframe_interval_s, audio, preset),
                file_arg(path),
            ]
        )

    truth = GroundTruth(
        path=str(path),
        duration_s=round(duration, 3),
        fps=float(fps),
        width=width,
        height=height,
        has_audio=audio,
        boundaries=boundaries,
        speech=spoken,
    )
    truth.save()
    return truth


def _check_segment_lengths(segments: list[float], transitions: list[str]) -> None:
    for index, length in enumerate(segments):
        # Each neighbouring gradual transition eats TRANSITION_S (or half of it for a fade).
        neighbours = [transitions[i] for i in (index - 1, index) if 0 <= i < len(transitions)]
        used = sum(
            TRANSITION_S if t in (DISSOLVE, FADEBLACK) else TRANSITION_S / 2 if t == FADE else 0 for t in neighbours
        )
        if length < used + 0.5:
            raise ValueError(f"segment {index} ({length} s) is too short for its transitions")


def _shot_source(index: int, width: int, height: int, fps: float, seed: int) -> str:
    template = SHOT_SOURCES[(index + seed) % len(SHOT_SOURCES)]
    number = seed * 101 + index
    return template.format(
        w=width,
        h=height,
        w2=2 * width,
        h2=2 * height,
        fps=fps,
        seed=number,
        c0=PALETTE[number % len(PALETTE)],
        c1=PALETTE[(number + 3) % len(PALETTE)],
    )


def _duration(segments: list[float], transitions: list[str]) -> float:
    overlaps = sum(TRANSITION_S for t in transitions if t in (DISSOLVE, FADEBLACK))
    return sum(segments) - overlaps


def _footage_source(input_index: int, width: int, height: int, fps: float) -> str:
    """A footage input scaled to cover the frame, centre-cropped, at the video's rate (trimmed by the shot)."""
    return (
        f"[{input_index}:v]scale={width}:{height}:force_original_aspect_ratio=increase,"
        f"crop={width}:{height},fps={fps},setpts=PTS-STARTPTS"
    )


def _video_graph(
    segments: list[float],
    transitions: list[str],
    width: int,
    height: int,
    fps: float,
    seed: int,
    sources: list[str] | None = None,
) -> tuple[str, list[TruthBoundary], float]:
    """Filter graph producing [video], the ground-truth boundaries and the total duration; shots come from
    `sources` (filter chains of footage inputs) when given, else from generated patterns."""
    chains: list[str] = []
    for index, length in enumerate(segments):
        fades = []
        if index > 0 and transitions[index - 1] == FADE:
            fades.append(f"fade=t=in:st=0:d={TRANSITION_S / 2}")
        if index < len(transitions) and transitions[index] == FADE:
            fades.append(f"fade=t=out:st={length - TRANSITION_S / 2}:d={TRANSITION_S / 2}")
        # A hue turn per shot keeps repeated source kinds apart; format/fps/timebase let xfade join them.
        steps = [
            sources[index] if sources else _shot_source(index, width, height, fps, seed),
            f"trim=duration={length}" if sources else f"trim=start={SOURCE_WARMUP_S}:duration={length}",
            "setpts=PTS-STARTPTS",
            *([] if sources else [f"hue=h={(index * 67 + seed * 29) % 360}"]),
            "format=yuv420p",
            "setsar=1",
            f"fps={fps}",
            "settb=AVTB",
            *fades,
        ]
        chains.append(",".join(steps) + f"[s{index}]")

    boundaries: list[TruthBoundary] = []
    current, length_so_far = "s0", segments[0]
    for index, transition in enumerate(transitions, start=1):
        joined = f"j{index}"
        if transition in (CUT, FADE):
            chains.append(f"[{current}][s{index}]concat=n=2:v=1:a=0[{joined}]")
            boundaries.append(
                TruthBoundary(round(length_so_far, 3), "cut" if transition == CUT else "gradual", transition)
            )
            length_so_far += segments[index]
        else:
            offset = length_so_far - TRANSITION_S
            kind = "fade" if transition == DISSOLVE else "fadeblack"
            chains.append(
                f"[{current}][s{index}]xfade=transition={kind}:duration={TRANSITION_S}:offset={offset:.3f}[{joined}]"
            )
            boundaries.append(TruthBoundary(round(offset + TRANSITION_S / 2, 3), "gradual", transition))
            length_so_far += segments[index] - TRANSITION_S
        current = joined
    chains.append(f"[{current}]null[video]")
    return ";".join(chains), boundaries, length_so_far


def _speak(
    sentences: list[str], scratch: Path, start_s: float, gap_s: float, duration: float
) -> tuple[list[SpokenSentence], list[Path]]:
    """espeak-ng each sentence to a wav and lay them out one after another from start_s."""
    spoken: list[SpokenSentence] = []
    wavs: list[Path] = []
    at = start_s
    for index, text in enumerate(sentences):
        wav = scratch / f"sentence_{index}.wav"
        subprocess.run(
            ["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), "--", text], check=True, capture_output=True
        )
        with wave.open(str(wav)) as handle:
            length = handle.getnframes() / handle.getframerate()
        if at + length > duration:
            raise ValueError(
                f"speech does not fit: sentence {index} would end at {at + length:.1f} s of a {duration:.1f} s video"
            )
        spoken.append(SpokenSentence(text, round(at, 3), round(at + length, 3)))
        wavs.append(wav)
        at += length + gap_s
    return spoken, wavs


def _audio_graph(spoken: list[SpokenSentence], duration: float) -> str:
    """[audio]: the sentences at their start times over silence, or a quiet tone without speech."""
    if not spoken:
        return (
            f"sine=frequency=440:sample_rate={AUDIO_RATE},volume=0.2,"
            f"atrim=duration={duration:.3f},aformat=channel_layouts=mono[audio]"
        )
    parts = [f"anullsrc=r={AUDIO_RATE}:cl=mono,atrim=duration={duration:.3f}[silence]"]
    labels = ["[silence]"]
    for index, sentence in enumerate(spoken):
        delay_ms = round(sentence.start_s * 1000)
        parts.append(
            f"[{index}:a]aresample={AUDIO_RATE},aformat=channel_layouts=mono,"
            f"adelay=delays={delay_ms}:all=1[speech{index}]"
        )
        labels.append(f"[speech{index}]")
    parts.append(f"{''.join(labels)}amix=inputs={len(labels)}:duration=first:normalize=0[audio]")
    return ";".join(parts)


def _codec_args(path: Path, fps: float, keyframe_interval_s: float, audio: bool, preset: str) -> list[str]:
    gop = ["-g", str(max(1, round(fps * keyframe_interval_s)))]
    suffix = path.suffix.lower()
    if suffix == ".webm":
        video = ["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "600k", *gop]
        sound = ["-c:a", "libopus", "-b:a", "48k"]
    else:
        video = ["-c:v", "libx264", "-preset", preset, "-crf", "23", "-pix_fmt", "yuv420p", *gop]
        sound = ["-c:a", "aac", "-b:a", "64k"]
    container = ["-movflags", "+faststart"] if suffix in (".mp4", ".mov", ".m4v") else []
    return [*video, *(sound if audio else ["-an"]), *container]
