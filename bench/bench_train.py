"""Training throughput of `cosmo-data train`: samples/s, tokens/s, data-wait fraction and, on GPUs with a
known bf16 peak, MFU.

Without a GPU it trains the tiny config (configs/train-tiny.yaml) on CPU. With one it trains the 2B
config (configs/train-cosmo.yaml: ViT-L-14 + OPT-IML-MAX-1.3B shapes, micro-batch 96, 128 tokens,
bf16 autocast); since device machines cannot fetch weights, it uses random weights of the same
architectures (open_clip ViT-L-14 with pretrained null, and a random OPT-1.3B directory made once under
$COSMO_DATA_CACHE) unless --real-weights is given. Either way, the data are real cosmo and mmc4 shards
written by tests/corpus_factory.py (the stream resamples them, so a small corpus feeds any number of steps).

Figures are medians over the steps after --warmup; data wait is the share of a step spent waiting for
the next micro-batch. Targets: data wait < 5% of step time; MFU >= 40% on one H100.

    .venv/bin/python bench/bench_train.py --out bench/results/train.json [--steps 30] [--layout cosmo]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the corpus factory lives with the tests

from corpus_factory import build_corpus  # noqa: E402

from cosmo_data.train import train  # noqa: E402
from cosmo_data.train.weights import OPT_1_3B_CONFIG, random_opt_directory  # noqa: E402

TARGET_DATA_WAIT = 0.05
TARGET_MFU = 0.40


def bench_layout(corpus: Path, layout: str, config: Path, steps: int, warmup: int, overrides: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-train-") as run:
        started = time.perf_counter()
        train([str(corpus / layout)], Path(run), config, steps, {"run.checkpoint_every": 10**9, **overrides})
        wall = time.perf_counter() - started
        records = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    measured = records[warmup:]

    def median(key: str) -> float | None:
        values = [r[key] for r in measured if r.get(key) is not None]
        return statistics.median(values) if values else None

    mfu = median("mfu")
    data_wait = median("data_wait_fraction")
    return {
        "layout": layout,
        "steps": steps,
        "measured_steps": len(measured),
        "samples_per_s": median("samples_per_s"),
        "tokens_per_s": median("tokens_per_s"),
        "data_wait_fraction": data_wait,
        "data_wait_target_met": data_wait is not None and data_wait < TARGET_DATA_WAIT,
        "mfu": mfu,
        "mfu_target_met": None if mfu is None else mfu >= TARGET_MFU,
        "skipped_samples": records[-1]["skipped_samples"],
        "first_loss": records[0]["loss"],
        "last_loss": records[-1]["loss"],
        "wall_s_with_setup": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the medians")
    parser.add_argument("--layout", choices=["cosmo", "mmc4", "both"], default="both")
    parser.add_argument(
        "--real-weights", action="store_true", help="on GPU: fetch ViT-L-14 openai and OPT-IML-MAX-1.3B"
    )
    args = parser.parse_args()

    gpu = torch.cuda.is_available()
    config = ROOT / "configs" / ("train-cosmo.yaml" if gpu else "train-tiny.yaml")
    overrides: dict = {}
    if gpu and not args.real_weights:
        overrides = {"vision.pretrained": None, "language.model": str(random_opt_directory(OPT_1_3B_CONFIG))}
    layouts = ["cosmo", "mmc4"] if args.layout == "both" else [args.layout]
    with tempfile.TemporaryDirectory(prefix="bench-corpus-") as folder:
        build_corpus(Path(folder), n_ok=12, n_failed=0, videos_per_group=2)
        results = [
            bench_layout(Path(folder) / "shards", layout, config, args.steps, args.warmup, overrides)
            for layout in layouts
        ]
    report = {
        "benchmark": "bench_train",
        "config": config.name,
        "weights": "real" if args.real_weights else "random (same architectures)",
        "device": torch.cuda.get_device_name()
        if gpu
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "targets": {"data_wait_fraction_below": TARGET_DATA_WAIT, "mfu_at_least_on_h100": TARGET_MFU},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
