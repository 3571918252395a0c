"""ASR quality and speed with real Whisper tiny.en, both backends, both windowing modes.

    python bench/bench_asr.py --out bench/results/asr.json

Speech with known text: the five LibriVox utterances of Debian pocketsphinx-testdata (23.7 s, public
domain, a human reader) and espeak-ng reading how-to steps placed at known times in silence (so each
sentence's onset and end are known). Every run is AsrStage itself on the real tiny.en (faster-whisper
int8, or openai-whisper fp32 on the same weights converted), greedy and beam 5.
Measured per run: WER (Whisper's English normaliser, corpus-level), segment start/end error against the
known speech (each sentence's nearest segment start and nearest segment end), and audio seconds per CPU
second of the process (all threads; getrusage), so other load on the machine does not skew it.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import resource
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from cosmo_data.schemas.config import BuildConfig
from cosmo_data.schemas.records import VideoRecord
from cosmo_data.stages.asr import AsrStage
from cosmo_data.stages.speech_eval import word_errors
from cosmo_data.stages.whisper_windows import SAMPLE_RATE

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
STEPS = [
    "First, wash the vegetables under cold water.",
    "Next, chop the onions into small pieces.",
    "Heat a little oil in a large pan.",
    "Dig the soil about twenty centimeters deep.",
    "Remove the wheel by opening the quick release lever.",
    "Put the wheel back and pump up the tyre.",
]
ONSETS_S = [1.0, 7.5, 14.0, 21.0, 27.5, 36.0]  # each sentence starts here, in silence
ESPEAK_TOTAL_S = 45.0


def librivox() -> list[tuple[bytes, str]]:
    utterances = []
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        text, name = re.fullmatch(r"<s> (.*) </s> \((.*)\)", line.strip()).groups()
        with wave.open(str(LIBRIVOX / f"{name}.wav")) as handle:
            utterances.append((handle.readframes(handle.getnframes()), text))
    return utterances


def espeak_steps() -> tuple[bytes, list[tuple[float, float]]]:
    """The steps spoken at ONSETS_S into silence, as 16 kHz s16le, and each one's (start, end) seconds."""
    audio = np.zeros(int(ESPEAK_TOTAL_S * SAMPLE_RATE), np.int16)
    spans = []
    with tempfile.TemporaryDirectory() as scratch:
        for text, onset in zip(STEPS, ONSETS_S):
            wav = Path(scratch) / "s.wav"
            subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), text], check=True)
            raw = subprocess.run(
                ["ffmpeg", "-v", "error", "-i", str(wav), "-ac", "1", "-ar", "16000", "-f", "s16le", "-"],
                check=True,
                capture_output=True,
            ).stdout
            speech = np.frombuffer(raw, np.int16)
            # espeak-ng's wav has a little silence at both ends: time the speech by its samples.
            loud = np.flatnonzero(np.abs(speech) > 300)
            start = int(onset * SAMPLE_RATE)
            audio[start : start + len(speech)] = speech
            spans.append((onset + loud[0] / SAMPLE_RATE, onset + loud[-1] / SAMPLE_RATE))
    return audio.tobytes(), spans


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(backend: str, windows: str, beam: int, libri, steps_pcm, spans) -> dict:
    # Beam 1 is greedy: beam_size None, as openai-whisper takes it.
    beam_size = None if beam == 1 else beam
    config = {"backend": backend, "model": "tiny.en", "windows": windows, "temperatures": [0.0], "beam_size": beam_size}
    stage = AsrStage(BuildConfig.model_validate({"asr": {**config, "resources": {"gpus": 0, "cpus": 2}}}))
    stage.setup()
    records = [VideoRecord(f"l{i}", f"l{i}", i, audio_pcm=pcm) for i, (pcm, _) in enumerate(libri)]
    records.append(VideoRecord("steps", "steps", len(records), audio_pcm=steps_pcm))
    audio_s = sum(len(r.audio_pcm) for r in records) / 2 / SAMPLE_RATE
    before = cpu_s()
    done = stage.process(records)
    used = cpu_s() - before
    texts = [" ".join(s.text for s in r.transcript) for r in done]
    segments = done[-1].transcript
    # None where the run returned no segment for the espeak audio at all.
    start_errors = [min(abs(s.start_s - a) for s in segments) for a, _ in spans] if segments else [np.nan]
    end_errors = [min(abs(s.end_s - b) for s in segments) for _, b in spans] if segments else [np.nan]
    return {
        "backend": backend,
        "windows": windows,
        "beam_size": beam,
        "wer_librivox": round(word_errors([t for _, t in libri], texts[:-1]).rate, 4),
        "wer_espeak": round(word_errors([" ".join(STEPS)], texts[-1:]).rate, 4),
        "start_error_s_mean": None if not segments else round(float(np.mean(start_errors)), 3),
        "end_error_s_mean": None if not segments else round(float(np.mean(end_errors)), 3),
        "cpu_s": round(used, 2),
        "audio_s": round(audio_s, 1),
        "audio_s_per_cpu_s": round(audio_s / used, 2),
        "espeak_text": texts[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/asr.json"))
    parser.add_argument("--backend", nargs="+", default=["faster_whisper", "openai_whisper"])
    parser.add_argument("--windows", nargs="+", default=["batched", "sequential"])
    parser.add_argument("--beam", nargs="+", type=int, default=[1, 5])
    args = parser.parse_args()
    libri = librivox()
    steps_pcm, spans = espeak_steps()
    results = []
    for backend in args.backend:
        for windows in args.windows:
            for beam in args.beam:
                result = run(backend, windows, beam, libri, steps_pcm, spans)
                print(json.dumps({k: v for k, v in result.items() if k != "espeak_text"}), flush=True)
                results.append(result)
                # Written after every run: openai-whisper's beam search runs take minutes on 2 cores.
                report = {"machine": platform.processor() or platform.machine(), "model": "tiny.en", "runs": results}
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
