"""`cosmo-data dedup`'s near-duplicate search (corpus/semantic.py) at corpus scale on synthetic embeddings.

N unit vectors of D dimensions (768: ViT-L-14's), 1 % of them noisy copies (cosine ~0.99) of others,
made batch by batch from a seed, as the corpus's embeddings parts are read, so the input is never held
whole. Each size runs in a process of its own; reported: wall seconds, CPU seconds, peak RSS above the
process's RSS after its imports (the search's own memory), and the planted copies
found (recall) with the pairs found beside them (false). Beside it, what the whole input would take in
memory as float32, the figure a search that loads the corpus starts from.

Usage: python bench/bench_dedup.py --out bench/results/dedup.json [--items 100000] [--dim 768]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import time
from pathlib import Path

import numpy as np

BATCH = 5000
COPY_SHARE = 0.01


def _batch(start: int, size: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows start..start+size: their embeddings and, per row, the row it copies (-1 for none). A copy
    copies a row of its own batch, so batches can be made independently."""
    rng = np.random.default_rng([seed, start])
    rows = rng.normal(size=(size, dim)).astype(np.float32)
    copies = rng.choice(size, size=int(size * COPY_SHARE) * 2, replace=False)
    sources, targets = copies[::2], copies[1::2]
    rows[targets] = rows[sources] + 0.1 * rng.normal(size=(len(targets), dim)).astype(np.float32) / np.sqrt(dim)
    of = np.full(size, -1, np.int64)
    of[targets] = start + sources
    return rows / np.linalg.norm(rows, axis=1, keepdims=True), of


def run(n_items: int, dim: int, threshold: float, queue: multiprocessing.Queue) -> None:
    import faiss  # noqa: F401  (imported before the baseline: its libraries are not the search's memory)

    from cosmo_data.corpus import semantic
    from cosmo_data.corpus.semantic import Batch, find_duplicates

    rss_after_imports_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def batches():
        for start in range(0, n_items, BATCH):
            rows, _ = _batch(start, min(BATCH, n_items - start), dim, seed=0)
            ids = np.arange(start, start + len(rows), dtype=np.int64)
            yield Batch(ids, ids, np.zeros(len(rows)), rows)

    wall, cpu = time.perf_counter(), time.process_time()
    found = {dup: kept for dup, kept, _ in find_duplicates(batches, n_items, threshold)}
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    planted = {}
    for start in range(0, n_items, BATCH):
        _, of = _batch(start, min(BATCH, n_items - start), dim, seed=0)
        planted |= {start + int(row): int(source) for row, source in enumerate(of) if source >= 0}
    hits = sum(1 for dup, kept in planted.items() if found.get(dup) == kept or found.get(kept) == dup)
    queue.put(
        {
            "items": n_items,
            "dim": dim,
            "threshold": threshold,
            "clusters": semantic.default_clusters(n_items),
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_after_imports_mb": round(rss_after_imports_kb / 1024, 1),
            "search_peak_mb": round(
                (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_after_imports_kb) / 1024, 1
            ),
            "input_float32_mb": round(n_items * dim * 4 / 2**20, 1),
            "spill_float16_mb": round(n_items * dim * 2 / 2**20, 1),
            "planted_copies": len(planted),
            "recall": round(hits / max(len(planted), 1), 4),
            "found": len(found),
            "found_not_planted": len(found) - hits,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--items", type=int, nargs="+", default=[100_000])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--threshold", type=float, default=0.95)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    results = []
    for n_items in args.items:
        queue = context.Queue()
        process = context.Process(target=run, args=(n_items, args.dim, args.threshold, queue))
        process.start()
        results.append(queue.get())
        process.join()
        print(json.dumps(results[-1]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"bench": "dedup", "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
