"""The near-duplicate search (corpus/semantic.py) on synthetic embeddings with planted copies: real
faiss k-means, the streamed spill files, the ranking and the group rule."""

from __future__ import annotations

import numpy as np

from cosmo_data.corpus.semantic import Batch, find_duplicates


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def planted(n: int = 3000, dim: int = 32, copies: int = 60, seed: int = 0):
    """n random unit vectors; the last `copies` are noisy copies (cosine ~0.99) of the first ones."""
    rng = np.random.default_rng(seed)
    base = unit(rng.normal(size=(n - copies, dim)))
    noisy = unit(base[:copies] + 0.08 * rng.normal(size=(copies, dim)).astype(np.float32) / np.sqrt(dim))
    embeddings = np.concatenate([base, noisy])
    ids = np.arange(n, dtype=np.int64) * 7  # ids need not be positions
    priority = np.zeros(n)
    priority[n - copies :: 2] = 1.0  # every other copy is the better scored one: it is kept instead
    return ids, priority, embeddings


def batches_of(ids, groups, priority, embeddings, size=500):
    def batches():
        for start in range(0, len(ids), size):
            part = slice(start, start + size)
            yield Batch(ids[part], groups[part], priority[part], embeddings[part])

    return batches


def test_planted_copies_are_found_across_batches_and_name_the_better_scored():
    ids, priority, embeddings = planted()
    n, copies = len(ids), 60
    found = {
        dup: (kept, sim) for dup, kept, sim in find_duplicates(batches_of(ids, ids, priority, embeddings), n, 0.95)
    }
    expected = {}
    for k in range(copies):
        original, copy = ids[k], ids[n - copies + k]
        better_copy = priority[n - copies + k] > 0
        expected[original if better_copy else copy] = copy if better_copy else original
    assert {dup: kept for dup, (kept, _) in found.items()} == expected
    assert all(0.95 <= sim <= 1.0 for _, sim in found.values())


def test_one_group_is_never_compared_with_itself_and_duplicates_name_kept_items():
    rng = np.random.default_rng(1)
    intro = unit(rng.normal(size=(1, 16)))
    # Video 0 shows the intro twice; videos 1 and 2 once each; one unrelated clip.
    embeddings = np.concatenate([intro, intro, intro, intro, unit(rng.normal(size=(1, 16)))])
    ids = np.arange(5, dtype=np.int64)
    groups = np.array([0, 0, 1, 2, 3], np.int64)
    found = sorted(find_duplicates(batches_of(ids, groups, np.zeros(5), embeddings, 2), 5, 0.95, n_clusters=2))
    # Clip 1 repeats clip 0 of its own video: kept; clips 2 and 3 name clip 0, a kept one, not each other.
    assert [(dup, kept) for dup, kept, _ in found] == [(2, 0), (3, 0)]


def test_nothing_below_the_threshold():
    rng = np.random.default_rng(2)
    embeddings = unit(rng.normal(size=(400, 64)))
    ids = np.arange(400, dtype=np.int64)
    assert list(find_duplicates(batches_of(ids, ids, np.zeros(400), embeddings), 400, 0.9)) == []
