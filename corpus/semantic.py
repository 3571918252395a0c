"""Near-duplicate search over embeddings with bounded memory: NeMo Curator's semantic dedup, streamed.

1. k-means (faiss, spherical) trained on an evenly strided sample of 64 points per centroid;
2. one streaming pass assigns every embedding to its nearest centroid and appends it, float16, with its
   id, group and priority, to its cluster's spill files on disk;
3. each cluster alone is loaded, ranked best first (higher priority, then lower id), and walked in
   blocks: an item whose cosine similarity to an item kept before it is >= threshold is a duplicate of
   the most similar one kept, otherwise it is kept. Duplicates always name a kept item (no chains),
   items of the same group (the clips of one video) are never compared, and the decisions come out
   cluster by cluster.

Memory is one batch of the input in step 2 and one cluster (its embeddings and a block x cluster
similarity matrix) in step 3, never the corpus. Cost with n items, k clusters, d dimensions: training
O(64 k^2 d) per iteration, assignment O(n k d), the clusters O(n^2 d / k) for even clusters. With the
default k = sqrt(n) the last two grow as n^1.5 d and training as n d (10k -> 10M clips: ~32,000x the
arithmetic for 1,000x the clips); pairs in different clusters are never compared, the price of not
comparing all n^2.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Training points per centroid: faiss wants at least 39; 64 keeps the sample (the search's largest
# allocation) at 64 sqrt(n) d floats: 62 MB at 100k 768-d items, 620 MB at 10M.
POINTS_PER_CENTROID = 64
MIN_POINTS_PER_CENTROID = 39
BLOCK = 1024  # items compared at once within a cluster


@dataclass
class Batch:
    ids: np.ndarray  # int64, unique, also the tie-break (lower first)
    groups: np.ndarray  # int64: items of one group are never duplicates of each other
    priority: np.ndarray  # float64: the higher, the more worth keeping
    embeddings: np.ndarray  # float32 [n, d], L2-normalised


def default_clusters(n_items: int) -> int:
    """sqrt(n), fewer where faiss would get under its minimum of 39 training points per centroid."""
    return max(1, min(round(math.sqrt(n_items)), n_items // MIN_POINTS_PER_CENTROID))


def find_duplicates(
    batches: Callable[[], Iterator[Batch]],
    n_items: int,
    threshold: float,
    n_clusters: int | None = None,
    seed: int = 0,
) -> Iterator[tuple[int, int, float]]:
    """(duplicate id, kept id, cosine similarity) for every duplicate; batches() is read twice."""
    if n_items == 0:
        return
    clusters = min(n_clusters or default_clusters(n_items), n_items)
    centroids = _train(batches, n_items, clusters, seed)
    with tempfile.TemporaryDirectory(prefix="cosmo-dedup-") as spill_dir:
        spill = Path(spill_dir)
        _spill_by_cluster(batches, centroids, spill)
        for cluster in range(clusters):
            yield from _cluster_duplicates(spill, cluster, threshold)


def _train(batches: Callable[[], Iterator[Batch]], n_items: int, clusters: int, seed: int):
    import faiss

    if clusters == 1:
        return None
    stride = max(1, math.ceil(n_items / (clusters * POINTS_PER_CENTROID)))
    sample, position = [], 0
    for batch in batches():
        picks = np.arange((-position) % stride, len(batch.ids), stride)
        sample.append(batch.embeddings[picks])
        position += len(batch.ids)
    points = np.ascontiguousarray(np.concatenate(sample), dtype=np.float32)
    kmeans = faiss.Kmeans(points.shape[1], clusters, niter=20, seed=seed, spherical=True, verbose=False)
    kmeans.train(points)
    return kmeans.index


def _spill_by_cluster(batches: Callable[[], Iterator[Batch]], centroids, spill: Path) -> None:
    for batch in batches():
        if centroids is None:
            assigned = np.zeros(len(batch.ids), np.int64)
        else:
            _, nearest = centroids.search(np.ascontiguousarray(batch.embeddings, dtype=np.float32), 1)
            assigned = nearest[:, 0]
        order = np.argsort(assigned, kind="stable")
        bounds = np.flatnonzero(np.diff(assigned[order])) + 1
        for rows in np.split(order, bounds):
            if len(rows) == 0:
                continue
            cluster = int(assigned[rows[0]])
            columns = {
                "ids": batch.ids[rows].astype("<i8"),
                "groups": batch.groups[rows].astype("<i8"),
                "priority": batch.priority[rows].astype("<f8"),
                "embeddings": batch.embeddings[rows].astype("<f2"),
            }
            for name, values in columns.items():
                with open(spill / f"{cluster}.{name}", "ab") as file:
                    file.write(values.tobytes())


def _cluster_duplicates(spill: Path, cluster: int, threshold: float) -> Iterator[tuple[int, int, float]]:
    if not (spill / f"{cluster}.ids").exists():
        return
    ids = np.fromfile(spill / f"{cluster}.ids", "<i8")
    groups = np.fromfile(spill / f"{cluster}.groups", "<i8")
    priority = np.fromfile(spill / f"{cluster}.priority", "<f8")
    embeddings = np.fromfile(spill / f"{cluster}.embeddings", "<f2").reshape(len(ids), -1).astype(np.float32)
    rank = np.lexsort((ids, -priority))  # best first: higher priority, then lower id
    ids, groups, embeddings = ids[rank], groups[rank], embeddings[rank]
    kept = np.zeros(len(ids), bool)
    for start in range(0, len(ids), BLOCK):
        stop = min(start + BLOCK, len(ids))
        # Similarity of this block to everything ranked before its end; only kept items count.
        sims = embeddings[start:stop] @ embeddings[:stop].T
        sims[groups[start:stop, None] == groups[None, :stop]] = -np.inf
        for row in range(stop - start):
            item = start + row
            candidates = np.flatnonzero(kept[:item])
            if len(candidates):
                best = candidates[np.argmax(sims[row, candidates])]
                similarity = float(sims[row, best])
                if similarity >= threshold:
                    yield int(ids[item]), int(ids[best]), round(min(similarity, 1.0), 4)
                    continue
            kept[item] = True
