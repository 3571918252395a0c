"""`cosmo-data filter`'s rewrite (corpus/rewrite.py) as the corpus grows: CPU seconds per group and peak memory.

Corpora of G groups of 3 videos (tests/corpus_factory.py: real tables, real tars in the native, mmc4 and
cosmo layouts), one video in ten with black clips; `filter_corpus` with clip.min_brightness=10 takes those
out. Each size runs in a process of its own; reported: CPU seconds of the filter, per group, the peak of
Arrow's memory pool (the tables held at once; RSS is no measure here, the factory's imports dwarf it), and
the groups whose files the rewrite staged again. A rewrite whose cost per
group stays flat as G grows is linear in the corpus; one that grows with G is O(groups x videos).

Usage: python bench/bench_rewrite.py --out bench/results/rewrite.json [--groups 10 40 160]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the corpus factory lives with the tests

from corpus_factory import realistic_records, write_corpus  # noqa: E402

VIDEOS_PER_GROUP = 3


def make_corpus(folder: Path, groups: int) -> Path:
    records = realistic_records(n_ok=groups * VIDEOS_PER_GROUP, n_failed=0)
    for k, record in enumerate(records):
        for clip in record.clips:
            clip.brightness = 2.0 if k % 10 == 0 else 100.0
    return write_corpus(folder / "out", records, videos_per_group=VIDEOS_PER_GROUP).out


def run(corpus: str, queue: multiprocessing.Queue) -> None:
    from cosmo_data.corpus import rewrite
    from cosmo_data.corpus.filter import filter_corpus
    from cosmo_data.schemas.config import CurationConfig

    staged = []
    real_write = rewrite.write_atomic
    rewrite.write_atomic = lambda path, data: staged.append(path) or real_write(path, data)
    import pyarrow as pa

    cpu = time.process_time()
    summary = filter_corpus(Path(corpus), CurationConfig.model_validate({"clip": {"min_brightness": 10}}))
    cpu = time.process_time() - cpu
    tars = [p for p in staged if p.suffix == ".tar"]
    queue.put(
        {
            "cpu_s": round(cpu, 3),
            "videos_filtered": sum(d.get("videos", 0) for d in summary.dropped.values()),
            "peak_arrow_mb": round(pa.default_memory_pool().max_memory() / 2**20, 1),
            "groups_staged": len({p.name for p in tars}),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--groups", type=int, nargs="+", default=[10, 40, 160])
    args = parser.parse_args()
    results = []
    context = multiprocessing.get_context("spawn")
    for groups in args.groups:
        with tempfile.TemporaryDirectory(prefix="bench-rewrite-") as folder:
            corpus = make_corpus(Path(folder), groups)
            queue = context.Queue()
            process = context.Process(target=run, args=(str(corpus), queue))
            process.start()
            result = {"groups": groups, "videos": groups * VIDEOS_PER_GROUP, **queue.get()}
            process.join()
        result["cpu_s_per_group"] = round(result["cpu_s"] / groups, 4)
        print(json.dumps(result), flush=True)
        results.append(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"videos_per_group": VIDEOS_PER_GROUP, "runs": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
