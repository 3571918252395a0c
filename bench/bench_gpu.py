"""Every GPU path of the project measured in one process, for a lent GPU machine's few minutes.

Parts, each under its own time budget (seconds of measuring after its setup; a part that fails is
recorded with its error and the others go on), on real-size architectures with random weights (the
lent machine reaches no model hub), in bf16 where the model allows:
  clip       open_clip ViT-L-14: images/s (224 px) and sentences/s (77 tokens)
  caption    CoCa ViT-L-14 through stages/caption.py's CocaCaptioner at caption.images_per_forward
             frames a pass (configs/default.yaml), greedy to caption.max_tokens: frames/s. Random
             weights never stop early, so every caption is max_tokens long: a lower bound.
  whisper    whisper-small through stages/whisper_windows.py's transcribe_batched at asr.window_batch
             windows a pass: audio seconds per second (temperature fallback off: random weights would
             retry every window at every temperature)
  transnet   TransNetV2 (the package's own weights) through stages/transnet.py's detector: frames/s
  stages     ClipScoreStage, CaptionStage and AsrStage themselves (they import no Ray) fed one batch of
             records cut from a generated video (keyframe JPEGs, 16 kHz speech-like audio, a
             document's sentences), default.yaml's settings; GPU busy share sampled with nvidia-ml-py
  trainer    `cosmo-data train` on configs/train-cosmo.yaml (ViT-L-14 + OPT-1.3B shapes, micro-batch
             96, 128 tokens, bf16) over generated mmc4 shards: tokens/s, step time, data-wait share,
             MFU and the FLOPs of a step (train/metrics.py counts them)
  narration  transformers' generate() on a Qwen2.5-3B-shaped model (Qwen2Config, random weights):
             output tokens/s at batch 1 and 16. vLLM is not measured: its wheel and CUDA kernels are
             several hundred MB, far more than the 64 MiB that travel to the lent machine.
Every figure is written with the device that gave it.

    python bench/bench_gpu.py --out bench/results/gpu.json          # on a GPU: about 6 minutes
    python bench/bench_gpu.py --smoke --out /tmp/gpu-smoke.json     # tiny shapes on CPU, < 1 minute

On the lent machine the packages it lacks come as wheels (scripts/device_wheels.sh; README, GPU recipe).
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
import traceback
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

# Seconds of measuring per part on a GPU; setup (random weights on the GPU) comes on top. With the
# setups the whole run stays under 8 minutes on an H100, leaving a rerun room in 15 minutes of device time.
# The trainer runs TRAIN_STEPS whole steps (its figure is what those take); its budget is what they should.
BUDGETS_S = {"clip": 20, "caption": 30, "whisper": 30, "transnet": 15, "stages": 45, "trainer": 120, "narration": 40}
SMOKE_BUDGET_S = 0.5
TRAIN_STEPS, TRAIN_WARMUP = 20, 5  # the trainer part runs whole steps, not a budget


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def whisper_without_numba() -> None:
    """openai-whisper imports numba (and with it llvmlite, ~45 MB of wheels, too much to travel) only for
    the DTW of word timestamps (whisper/timing.py), which the pipeline never asks for. A stand-in whose
    jit leaves the function as it is lets whisper import without it; nothing here calls those functions."""
    if "numba" not in sys.modules:
        stand_in = types.ModuleType("numba")
        stand_in.jit = lambda *args, **kwargs: lambda function: function
        sys.modules["numba"] = stand_in


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def repeat_for(budget_s: float, work: Callable[[], int]) -> tuple[float, int, int]:
    """Run work() once to warm up, then until budget_s has passed (at least once): (seconds, items, calls)."""
    work()
    sync()
    started, items, calls = time.perf_counter(), 0, 0
    while calls == 0 or time.perf_counter() - started < budget_s:
        items += work()
        calls += 1
    sync()
    return time.perf_counter() - started, items, calls


class BusySampler:
    """The GPU's busy share (nvidia-ml-py's utilization: the share of time a kernel ran), sampled every 50 ms
    while in the with-block; None where there is no NVIDIA GPU or no nvidia-ml-py."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self.handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
            self.read = lambda: pynvml.nvmlDeviceGetUtilizationRates(self.handle).gpu
        except Exception:  # no pynvml, no driver, no GPU
            self.handle = None
        self.stop = threading.Event()

    def __enter__(self) -> BusySampler:
        if self.handle is not None:
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.05):
            self.samples.append(self.read())

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.handle is not None:
            self.thread.join()

    @property
    def share(self) -> float | None:
        return round(statistics.mean(self.samples) / 100, 3) if self.samples else None


# -- generated media --------------------------------------------------------------------------------


def video_frames(count: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    """A generated video: a moving gradient with drifting blocks and a cut every 48 frames (RGB uint8)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    shot_colours = rng.random((count // 48 + 1, 3)) * 255
    frames = []
    for index in range(count):
        shot, t = divmod(index, 48)
        base = shot_colours[shot]
        frame = np.empty((height, width, 3), np.float32)
        for channel in range(3):
            frame[..., channel] = (base[channel] + 60 * np.sin((xs + 4 * t) / (20 + 7 * shot) + channel)) % 256
        box = (slice(height // 4, height // 2), slice((t * 5) % width, (t * 5) % width + width // 6))
        frame[box] = 255 - frame[box]
        frames.append(frame.astype(np.uint8))
    return frames


def jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def speech_like_audio(seconds: float, seed: int = 0) -> np.ndarray:
    """16 kHz float32: voiced syllables (harmonics under a 4 Hz envelope) with a pause every ~6 s."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    pitch = 120 + 30 * np.sin(2 * np.pi * 0.3 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / 16000
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) ** 2
    voiced *= (t % 6.0) < 5.2  # pauses where windows are cut
    return (0.2 * voiced + 0.003 * rng.standard_normal(len(t))).astype(np.float32)


SENTENCES = [
    "First loosen the four bolts that hold the wheel to the hub.",
    "Now lift the car with the jack until the tire clears the ground.",
    "Slide the new filter in with the arrow pointing toward the engine.",
    "Whisk the eggs and the sugar until the mixture turns pale.",
    "Pour the batter into the pan and tap it to release the air bubbles.",
    "Sand the edge lightly before you apply the second coat of paint.",
]


# -- parts ------------------------------------------------------------------------------------------


def part_clip(smoke: bool, budget_s: float) -> dict[str, Any]:
    from cosmo_data.models import TINY_CLIP, load_open_clip

    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_open_clip(TINY_CLIP if smoke else "ViT-L-14", None, device, fp16=False)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = loaded.model.to(dtype)
    batch = 4 if smoke else 256
    size = loaded.preprocess.transforms[0].size
    size = size if isinstance(size, int) else size[0]
    pixels = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
    tokens = loaded.tokenizer([SENTENCES[k % len(SENTENCES)] for k in range(batch)]).to(device)
    with torch.inference_mode():
        image_s, images, _ = repeat_for(budget_s / 2, lambda: (model.encode_image(pixels), batch)[1])
        text_s, texts, _ = repeat_for(budget_s / 2, lambda: (model.encode_text(tokens), batch)[1])
    return {
        "model": loaded.name,
        "dtype": str(dtype),
        "batch": batch,
        "images_per_s": round(images / image_s, 1),
        "sentences_per_s": round(texts / text_s, 1),
    }


def part_caption(smoke: bool, budget_s: float) -> dict[str, Any]:
    from PIL import Image

    from cosmo_data.models import TINY_COCA, OpenClipModel, load_open_clip
    from cosmo_data.schemas.config import load_config
    from cosmo_data.stages.caption import CocaCaptioner

    config = load_config(ROOT / "configs" / ("tiny.yaml" if smoke else "default.yaml")).caption
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_open_clip(TINY_COCA if smoke else config.model, None, device, fp16=False)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    loaded = OpenClipModel(loaded.name, loaded.model.to(dtype), loaded.preprocess, loaded.tokenizer, device, dtype)
    captioner = CocaCaptioner(loaded, config.max_tokens)
    batch = 4 if smoke else config.images_per_forward
    images = [Image.fromarray(frame) for frame in video_frames(batch, 640, 360)]
    seconds, frames, _ = repeat_for(budget_s, lambda: len(captioner.caption(images)))
    return {
        "model": loaded.name,
        "dtype": str(dtype),
        "images_per_forward": batch,
        "max_tokens": captioner.max_tokens,
        "frames_per_s": round(frames / seconds, 2),
        "note": "random weights caption to max_tokens every time: a lower bound on frames/s",
    }


def random_whisper(smoke: bool, folder: Path) -> Path:
    """A whisper checkpoint file of the small architecture (or the tiny test one) with random weights."""
    import dataclasses

    from whisper.model import ModelDimensions, Whisper

    from cosmo_data.models import TINY_WHISPER_DIMS

    small = {
        "n_mels": 80,
        "n_audio_ctx": 1500,
        "n_audio_state": 768,
        "n_audio_head": 12,
        "n_audio_layer": 12,
        "n_vocab": 51865,
        "n_text_ctx": 448,
        "n_text_state": 768,
        "n_text_head": 12,
        "n_text_layer": 12,
    }  # fmt: skip  (whisper's own dims of "small")
    dims = ModelDimensions(**(TINY_WHISPER_DIMS if smoke else small))
    model = Whisper(dims)
    torch.nn.init.normal_(model.decoder.positional_embedding, std=0.01)  # left as torch.empty by whisper
    path = folder / "whisper-random.pt"
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": model.state_dict()}, path)
    return path


def part_whisper(smoke: bool, budget_s: float) -> dict[str, Any]:
    whisper_without_numba()
    from cosmo_data.models import load_whisper
    from cosmo_data.schemas.config import load_config
    from cosmo_data.stages.whisper_windows import DecodeSettings, transcribe_batched

    asr = load_config(ROOT / "configs" / ("tiny.yaml" if smoke else "default.yaml")).asr
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory(prefix="bench-gpu-whisper-") as folder:
        model = load_whisper(str(random_whisper(smoke, Path(folder))), device)
    settings = DecodeSettings(
        language="en", temperatures=(0.0,), sample_len=asr.max_new_tokens, beam_size=None, best_of=None,
        compression_ratio_threshold=None, logprob_threshold=None, no_speech_threshold=None, fp16=device == "cuda",
    )  # fmt: skip
    seconds_each = 20 if smoke else 120
    audios = [speech_like_audio(seconds_each, seed) for seed in range(2 if smoke else asr.window_batch // 2)]
    batch = 2 if smoke else asr.window_batch

    def transcribe() -> int:
        transcribe_batched(model, audios, settings, asr.silence_dbfs, batch)
        return seconds_each * len(audios)

    seconds, audio_s, _ = repeat_for(budget_s, transcribe)
    return {
        "model": "small (random weights)" if not smoke else "tiny-random",
        "dtype": "float16" if settings.fp16 else "float32",
        "window_batch": batch,
        "audios": f"{len(audios)} x {seconds_each} s",
        "audio_s_per_s": round(audio_s / seconds, 1),
        "note": "temperature fallback off; random weights decode to max_new_tokens per window: a lower bound",
    }


def part_transnet(smoke: bool, budget_s: float) -> dict[str, Any]:
    from cosmo_data.schemas.config import ScenesConfig
    from cosmo_data.stages.transnet import HEIGHT, WIDTH, TransNetDetector, load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = ScenesConfig(detector="transnetv2", transnet_device=device)
    model = load_model(device)
    frames = video_frames(100 if smoke else 1500, WIDTH, HEIGHT)

    def detect() -> int:
        detector = TransNetDetector(config, model)
        for index, frame in enumerate(frames):
            detector.push(index / 25, frame)
        detector.finish(len(frames) / 25)
        return len(frames)

    seconds, count, _ = repeat_for(budget_s, detect)
    return {
        "batch_windows": config.transnet_batch_windows,
        "frames": len(frames),
        "frames_per_s": round(count / seconds),
    }


def stage_records(count: int, keyframes: int, audio_s: float, size: tuple[int, int]) -> list[Any]:
    from cosmo_data.schemas.records import Document, Frame, Sentence, VideoRecord

    frames = video_frames(keyframes * 12, *size)
    records = []
    for index in range(count):
        pcm = (np.clip(speech_like_audio(audio_s, index), -1, 1) * 32767).astype("<i2").tobytes()
        chosen = frames[index % 12 :: 12][:keyframes]
        sentences = [
            Sentence(SENTENCES[(index + k) % len(SENTENCES)], 5.0 * k, 5.0 * k + 4, "asr")
            for k in range(max(keyframes, 4))
        ]
        records.append(
            VideoRecord(
                video_id=f"gen{index:03d}", source=f"generated/{index}.mp4", source_index=index,
                duration_s=audio_s, fps=25.0, width=size[0], height=size[1], has_audio=True,
                frames=[
                    Frame(clip_idx=k, frame_idx=k, t_s=audio_s * k / keyframes, width=size[0], height=size[1],
                          jpeg=jpeg(frame))
                    for k, frame in enumerate(chosen)
                ],
                audio_pcm=pcm,
                document=Document(doc_id=f"gen{index:03d}", sentences=sentences),
            )
        )  # fmt: skip
    return records


def part_stages(smoke: bool, budget_s: float) -> dict[str, Any]:
    import copy

    whisper_without_numba()
    from cosmo_data.schemas.config import load_config
    from cosmo_data.stages.asr import AsrStage
    from cosmo_data.stages.caption import CaptionStage
    from cosmo_data.stages.clip_score import ClipScoreStage

    with tempfile.TemporaryDirectory(prefix="bench-gpu-stages-") as folder:
        # Random weights would send every window through every fallback temperature: real ones rarely do.
        # openai-whisper: faster-whisper (default.yaml's backend) needs ctranslate2 and onnxruntime, ~146 MB
        # installed, far over what travels to the lent machine (60 MiB of wheels).
        overrides: dict[str, Any] = {
            "asr.temperatures": [0.0],
            "asr.backend": "openai_whisper",
            "asr.model": str(random_whisper(smoke, Path(folder))),
            "narration.enabled": False,
        }
        if smoke:  # random weights never stop on their own
            overrides["asr.max_new_tokens"] = 24
        if not smoke:  # random weights; the LAION predictors would be fetched (a few MFLOPs a frame: left out)
            overrides |= {
                "caption.pretrained": None, "clip_score.pretrained": None, "clip_score.aesthetic_model": None,
                "clip_score.nsfw_model": None,
            }  # fmt: skip
        config = load_config(ROOT / "configs" / ("tiny.yaml" if smoke else "default.yaml"), overrides)
        stages = [ClipScoreStage(config), CaptionStage(config), AsrStage(config)]
        for stage in stages:
            stage.setup()
    videos = 2 if smoke else 8
    records = stage_records(videos, 3 if smoke else 16, 10 if smoke else 60, (320, 180) if smoke else (640, 360))
    results = {}
    for stage in stages:
        stage.process(copy.deepcopy(records[:1]))  # warm-up
        sync()
        calls, started = 0, time.perf_counter()
        with BusySampler() as busy:
            while calls == 0 or time.perf_counter() - started < budget_s / len(stages):
                done = stage.process(copy.deepcopy(records))
                calls += 1
            sync()
        seconds = time.perf_counter() - started
        failed = [r.error for r in done if r.error]
        results[stage.name] = {
            "videos_per_s": round(videos * calls / seconds, 3),
            "keyframes_per_s": round(sum(len(r.frames) for r in records) * calls / seconds, 1),
            "gpu_busy_share": busy.share,
            "failed": failed[:2],
        }
    return {
        "batch": f"{videos} videos x {len(records[0].frames)} keyframes, {records[0].duration_s:.0f} s of audio each",
        **results,
        "note": "default.yaml's settings but ASR on openai-whisper (faster-whisper's ctranslate2 does not travel), "
        "asr.temperatures [0.0] and no LAION predictors (random weights)",
    }


def mmc4_shards(folder: Path, samples: int, seed: int = 0) -> Path:
    """mmc4-layout tars of generated documents: 3 images of 224 px (over min_image_kb) and ~8 sentences."""
    import base64

    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    frames = video_frames(48 * 4, 224, 224, seed)
    rng = np.random.default_rng(seed)
    noisy = [np.clip(f.astype(np.int16) + rng.integers(-40, 40, f.shape), 0, 255).astype(np.uint8) for f in frames]
    per_tar = 16
    for tar in range(max(samples // per_tar, 1)):
        with wds.TarWriter(str(folder / f"{tar:06d}.tar")) as writer:
            for index in range(per_tar):
                n = tar * per_tar + index
                text = [SENTENCES[(n + k) % len(SENTENCES)] for k in range(8)]
                images = [
                    {"image_base64": base64.b64encode(jpeg(noisy[(n * 3 + k) % len(noisy)])).decode(),
                     "matched_text_index": 2 * k, "matched_sim": 0.3}
                    for k in range(3)
                ]  # fmt: skip
                meta = {"text_list": text, "image_info": images}
                writer.write({"__key__": f"doc{n:05d}", "json": json.dumps(meta).encode()})
    return folder


def part_trainer(smoke: bool, budget_s: float) -> dict[str, Any]:
    from cosmo_data.train import train
    from cosmo_data.train.config import load_train_config
    from cosmo_data.train.weights import OPT_1_3B_CONFIG, random_opt_directory

    gpu = torch.cuda.is_available()
    config = ROOT / "configs" / ("train-tiny.yaml" if smoke or not gpu else "train-cosmo.yaml")
    steps, warmup = (3, 1) if smoke else (TRAIN_STEPS, TRAIN_WARMUP)
    overrides: dict[str, Any] = {"run.checkpoint_every": 10**9, "run.log_every_s": 10**9}
    if not smoke and gpu:
        overrides |= {"vision.pretrained": None, "language.model": str(random_opt_directory(OPT_1_3B_CONFIG))}
    with tempfile.TemporaryDirectory(prefix="bench-gpu-train-") as folder:
        shards = mmc4_shards(Path(folder) / "mmc4", 32 if smoke else 256)
        train([str(shards)], Path(folder) / "run", config, steps, overrides)
        records = [json.loads(line) for line in (Path(folder) / "run" / "metrics.jsonl").read_text().splitlines()]
    measured = records[warmup:]

    def median(key: str) -> float | None:
        values = [r[key] for r in measured if r.get(key) is not None]
        return statistics.median(values) if values else None

    samples_per_step = load_train_config(config).data.micro_batch  # accumulation 1, one rank
    return {
        "config": config.name,
        "steps": f"{len(measured)} measured after {warmup}",
        "tokens_per_s": median("tokens_per_s"),
        "step_s": round(samples_per_step / median("samples_per_s"), 4),
        "data_wait_share": median("data_wait_fraction"),
        "mfu": median("mfu"),
        "step_tflops": median("step_tflops"),
        "flops_counted": "2 x vision params x patch tokens + 6 x resampler params x patch tokens + "
        "(4 x frozen LM params + 6 x trainable head/cross-attention/text-pooling params) x text tokens "
        "(train/metrics.py); MFU = step FLOPs / step time / bf16 dense peak",
        "skipped_samples": records[-1]["skipped_samples"],
    }


def part_narration(smoke: bool, budget_s: float) -> dict[str, Any]:
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    shape = dict(
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        vocab_size=151936,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
    )  # fmt: skip  (Qwen2.5-3B-Instruct's config.json)
    if smoke:
        shape |= dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=1000)  # fmt: skip
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # random weights made on the GPU itself: seconds, not minutes on CPU
            model = Qwen2ForCausalLM(Qwen2Config(**shape)).eval()
    finally:
        torch.set_default_dtype(previous)
    prompt_tokens, new_tokens = (32, 8) if smoke else (512, 128)
    results: dict[str, Any] = {"model": "Qwen2.5-3B shape (random weights)" if not smoke else "tiny Qwen2"}
    for batch in (1, 16):
        prompt = torch.randint(0, shape["vocab_size"], (batch, prompt_tokens), device=device)
        generation = GenerationConfig(
            max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None
        )

        def generate(prompt: torch.Tensor = prompt, generation: GenerationConfig = generation) -> int:
            with torch.inference_mode():
                model.generate(prompt, generation_config=generation)
            return prompt.shape[0] * new_tokens

        seconds, made, _ = repeat_for(budget_s / 2, generate)
        results[f"batch_{batch}_output_tokens_per_s"] = round(made / seconds, 1)
    results |= {
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "dtype": str(dtype),
        "vllm": "not measured: its wheel and kernels are far larger than the 64 MiB that travel",
    }
    return results


# HowTo100M as the README's estimate counts it: 1.24M videos, 134,000 h of audio, ~20 keyframes a video;
# TransNetV2 reads every frame (25 fps).
HOWTO100M = {"keyframes": 25e6, "audio_s": 134_000 * 3600, "frames": 134_000 * 3600 * 25}


def howto100m_gpu_hours(parts: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """GPU-hours of each model over HowTo100M at the rates this run measured (the README's estimate
    assumed 100x a 2-core CPU instead)."""

    def hours(amount: float, part: str, key: str) -> float | None:
        rate = parts.get(part, {}).get(key)
        return round(amount / rate / 3600, 1) if rate else None

    return {
        "caption_coca_l14": hours(HOWTO100M["keyframes"], "caption", "frames_per_s"),
        "asr_whisper_small": hours(HOWTO100M["audio_s"], "whisper", "audio_s_per_s"),
        "clip_l14_images": hours(HOWTO100M["keyframes"], "clip", "images_per_s"),
        "scenes_transnetv2": hours(HOWTO100M["frames"], "transnet", "frames_per_s"),
    }


PARTS: dict[str, Callable[[bool, float], dict[str, Any]]] = {
    "clip": part_clip,
    "caption": part_caption,
    "whisper": part_whisper,
    "transnet": part_transnet,
    "stages": part_stages,
    "trainer": part_trainer,
    "narration": part_narration,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: checks that every part runs")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of " + ", ".join(PARTS))
    parser.add_argument(
        "--deadline-s", type=float, default=480, help="parts that would end past this are left out (GPU runs)"
    )
    args = parser.parse_args()
    if args.smoke:
        torch.set_num_threads(min(torch.get_num_threads(), 2))
    device = device_name()
    report: dict[str, Any] = {"benchmark": "bench_gpu", "device": device, "smoke": args.smoke, "parts": {}}
    started = time.perf_counter()
    for name in args.parts.split(","):
        budget = SMOKE_BUDGET_S if args.smoke else BUDGETS_S[name]
        part_started = time.perf_counter()
        if not args.smoke and part_started - started + budget > args.deadline_s:
            result = {"skipped": f"would end past --deadline-s {args.deadline_s:.0f} s; rerun with --parts {name}"}
        else:
            try:
                result = PARTS[name](args.smoke, budget)
            except Exception:  # one part's failure must not cost the other parts' figures
                result = {"error": traceback.format_exc(limit=-6)}
        if torch.cuda.is_available():
            result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        result |= {"device": device, "budget_s": budget, "wall_s": round(time.perf_counter() - part_started, 1)}
        report["parts"][name] = result
        print(f"{name:<10} {result['wall_s']:>6.1f} s  {summary(result)}", flush=True)
        report["wall_s"] = round(time.perf_counter() - started, 1)
        report["howto100m_gpu_hours"] = howto100m_gpu_hours(report["parts"])
        report["imported_modules"] = sorted({name.split(".")[0] for name in sys.modules})
        report["numba_stand_in"] = "numba" in sys.modules and not hasattr(sys.modules["numba"], "__file__")
        # Written after every part: a run stopped by its time limit still leaves what it measured.
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"HowTo100M GPU-hours at these rates: {report['howto100m_gpu_hours']}", flush=True)
    print(f"{report['wall_s']} s on {device}; {args.out}", flush=True)


def summary(result: dict[str, Any]) -> str:
    if "error" in result:
        return "ERROR " + result["error"].strip().splitlines()[-1]
    if "skipped" in result:
        return "SKIPPED " + result["skipped"]
    figures = []
    for key, value in result.items():
        if isinstance(value, dict):
            figures += [f"{key}.{k} {v}" for k, v in value.items() if k.endswith(("_per_s", "share"))]
        elif key.endswith(("_per_s", "_share", "mfu", "step_s", "step_tflops")):
            figures.append(f"{key} {value}")
    return ", ".join(figures)


if __name__ == "__main__":
    main()
