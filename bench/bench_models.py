"""Throughput of the real-size model architectures the GPU stages run, with random weights.

Compute does not depend on the weights, so the models are built without any hub access:
open_clip.create_model(name, pretrained=None) and whisper "small" from its published dimensions.
Runs on CUDA when available (fp16, as the stages do there), else on CPU with few, small batches.

    python bench/bench_models.py --out bench/results/models.json

Measured (best of `iterations` timed calls after `warmup`):
- clip_vit_l14: ViT-L-14 image embeddings (model only, preprocessed batches), open_clip's image
  preprocessing alone (PIL -> tensor, the CPU side of the clip_score stage), text embeddings.
- whisper_small: the encoder on 30 s windows, and encoder + a fixed-length greedy decode
  (whisper.decode with sample_len tokens; the tokens actually decoded are reported), as audio
  seconds per second. Real speech decodes ~60-100 tokens per 30 s window.
- coca_vit_l14: the caption stage's CoCa decoder (CocaCaptioner) on preprocessed-from-PIL frames,
  forced to a fixed caption length (end-of-text held back), frames per second.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cosmo_data.models import OpenClipModel
from cosmo_data.stages.caption import CocaCaptioner

# whisper "small" as published by openai/whisper (ModelDimensions of small.pt).
WHISPER_SMALL_DIMS = {
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
}

SETTINGS = {
    "cpu": {
        "warmup": 1,
        "iterations": 3,
        "clip_images": 4,
        "clip_texts": 16,
        "whisper_windows": 1,
        "whisper_tokens": 16,
        "coca_frames": 2,
        "coca_tokens": 10,
    },
    "cuda": {
        "warmup": 2,
        "iterations": 5,
        "clip_images": 64,
        "clip_texts": 256,
        "whisper_windows": 8,
        "whisper_tokens": 64,
        "coca_frames": 32,
        "coca_tokens": 20,
    },
}

SENTENCE = "now pour the batter into the hot pan and wait until bubbles form on the surface"


def timed(fn: Callable[[], object], device: str, warmup: int, iterations: int) -> float:
    """Fastest seconds per call after warmup: the least disturbed by other work on a shared machine."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(iterations):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best


def frames(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (360, 640, 3), dtype=np.uint8)) for _ in range(n)]


def open_clip_random(name: str, device: str) -> OpenClipModel:
    import open_clip

    precision = "fp16" if device == "cuda" else "fp32"
    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=None, device=device, precision=precision
    )
    if hasattr(model, "text_decoder"):
        # open_clip leaves CoCa's caption head uninitialised (torch.empty): keep its logits finite.
        head = model.text_decoder.text_projection
        torch.nn.init.normal_(head, std=head.shape[0] ** -0.5)
    dtype = torch.float16 if device == "cuda" else torch.float32
    return OpenClipModel(name, model.eval(), preprocess, open_clip.get_tokenizer(name), device, dtype)


@torch.no_grad()
def bench_clip(device: str, s: dict) -> dict:
    clip = open_clip_random("ViT-L-14", device)
    images = frames(s["clip_images"])
    pixels = torch.stack([clip.preprocess(image) for image in images]).to(device, clip.dtype)
    tokens = clip.tokenizer([SENTENCE] * s["clip_texts"]).to(device)
    image_s = timed(lambda: clip.model.encode_image(pixels), device, s["warmup"], s["iterations"])
    preprocess_s = timed(lambda: [clip.preprocess(image) for image in images], "cpu", 1, s["iterations"])
    text_s = timed(lambda: clip.model.encode_text(tokens), device, s["warmup"], s["iterations"])
    return {
        "model": "open_clip ViT-L-14 (random weights)",
        "images_per_s": len(images) / image_s,
        "preprocess_images_per_s": len(images) / preprocess_s,
        "texts_per_s": len(tokens) / text_s,
        "image_batch": len(images),
        "text_batch": len(tokens),
        "preprocess_input": "640x360 RGB PIL images, one process",
    }


@torch.no_grad()
def bench_whisper(device: str, s: dict) -> dict:
    import whisper
    from whisper.model import ModelDimensions, Whisper

    model = Whisper(ModelDimensions(**WHISPER_SMALL_DIMS))
    torch.nn.init.normal_(model.decoder.positional_embedding, std=0.01)  # torch.empty in whisper
    model = model.to(device).eval()
    dtype = torch.float16 if device == "cuda" else torch.float32
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(30 * 16000 * s["whisper_windows"]) * 0.1).astype(np.float32)
    mel = whisper.log_mel_spectrogram(audio, model.dims.n_mels, device=device)
    windows = torch.stack([mel[:, k * 3000 : (k + 1) * 3000] for k in range(s["whisper_windows"])]).to(dtype)
    options = whisper.DecodingOptions(
        language="en", temperature=0.0, sample_len=s["whisper_tokens"], fp16=dtype == torch.float16
    )
    decoded: list[int] = []

    def encode_and_decode() -> None:
        results = whisper.decode(model, windows, options)
        decoded.extend(len(r.tokens) for r in results)

    encoder_s = timed(lambda: model.embed_audio(windows), device, s["warmup"], s["iterations"])
    full_s = timed(encode_and_decode, device, s["warmup"], s["iterations"])
    audio_s = 30.0 * s["whisper_windows"]
    return {
        "model": "whisper small dims (random weights)",
        "encoder_audio_s_per_s": audio_s / encoder_s,
        "encode_decode_audio_s_per_s": audio_s / full_s,
        "windows_per_batch": s["whisper_windows"],
        "sample_len": s["whisper_tokens"],
        "mean_tokens_decoded_per_window": float(np.mean(decoded)),
        "decoding": "whisper.decode, greedy, language given, timestamps on, no fallback",
    }


def bench_coca(device: str, s: dict) -> dict:
    clip = open_clip_random("coca_ViT-L-14", device)
    images = frames(s["coca_frames"])
    # End-of-text held back for the whole caption: every frame decodes exactly coca_tokens tokens.
    captioner = CocaCaptioner(clip, max_tokens=s["coca_tokens"], min_tokens=s["coca_tokens"])
    seconds = timed(lambda: captioner.caption(images), device, s["warmup"], s["iterations"])
    return {
        "model": "open_clip coca_ViT-L-14 (random weights)",
        "frames_per_s": len(images) / seconds,
        "frames_per_batch": len(images),
        "tokens_per_caption": s["coca_tokens"],
        "includes": "open_clip preprocessing of 640x360 PIL frames, image encoder, greedy text decoder",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/models.json"))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    settings = SETTINGS[device]
    torch.manual_seed(0)
    results = {}
    for name, bench in (("clip_vit_l14", bench_clip), ("whisper_small", bench_whisper), ("coca_vit_l14", bench_coca)):
        started = time.perf_counter()
        results[name] = bench(device, settings)
        results[name]["bench_wall_s"] = time.perf_counter() - started
        print(name, json.dumps(results[name], indent=1), flush=True)
    report = {
        "device": torch.cuda.get_device_name()
        if device == "cuda"
        else f"cpu ({platform.processor() or platform.machine()})",
        "precision": "fp16" if device == "cuda" else "fp32",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "settings": settings,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
