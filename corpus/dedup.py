"""Duplicates in a built corpus: exact copies (the same file under other source ids) and near-duplicate
videos and clips (`cosmo-data dedup`). A duplicate keeps its row with status "duplicate" and
duplicate_of naming the copy kept; its documents leave the shards through rewrite_corpus.

Exact: the build hashes every downloaded file (videos.content_hash, in the video stage); which copy is
kept is the lower source_index, whatever order the workers finished in. Copies can land in groups
written at any time (and across resumes), so the decision is made here, over the whole videos table,
after the last group is written: `cosmo-data build` runs it at its end, `dedup` runs it again first.

Near: videos and clips embedded by the mean of their keyframes' CLIP embeddings (the embeddings
table), searched by corpus/semantic.py. Videos first; then the clips of the videos left, never
against clips of their own video (intros repeated across a channel). The copy kept is the better
scored: the higher mean matched similarity of its video's document images, then the lower
source_index. A duplicate clip is marked in the clips table; its video's document stays (the
assignment would have to run again without it).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cosmo_data.corpus.rewrite import RewriteSummary, record_step, rewrite_groups
from cosmo_data.corpus.semantic import Batch, find_duplicates
from cosmo_data.schemas.records import DUPLICATE, OK
from cosmo_data.storage import AnyPath, location
from cosmo_data.storage.corpus_state import corpus_lock, finish_pending_rewrite

DEFAULT_THRESHOLD = 0.95
# Clip ids in the search: source_index << CLIP_BITS | clip_idx (a video has far fewer clips than this).
CLIP_BITS = 20


@dataclass
class DedupSummary:
    exact_videos: int = 0
    near_videos: int = 0
    near_clips: int = 0
    rewrite: RewriteSummary | None = None  # None when nothing changed


def _parts(corpus: AnyPath, table: str) -> list[AnyPath]:
    return sorted((corpus / table).glob("part-*.parquet"))


def _read(path: AnyPath, columns: list[str]) -> pa.Table:
    """These columns of one table part (those it has: a corpus built before a column existed)."""
    data = io.BytesIO(path.read_bytes())
    present = set(pq.read_schema(data).names)
    return pq.read_table(data, columns=[c for c in columns if c in present])


def _videos(corpus: AnyPath) -> pa.Table:
    columns = ["video_id", "source_index", "status", "content_hash", "duplicate_of"]
    parts = [_read(path, columns) for path in _parts(corpus, "videos")]
    return pa.concat_tables(parts, promote_options="default") if parts else pa.table({c: [] for c in columns})


def exact_duplicates(corpus: AnyPath | str) -> dict[str, str]:
    """{video_id: kept video_id} for ok videos whose file is byte for byte an ok video's of a lower
    source_index (a copy that failed is no copy to keep)."""
    corpus = location(corpus)
    finish_pending_rewrite(corpus)  # or it would read part old tables, part new
    videos = _videos(corpus)
    if "content_hash" not in videos.column_names:
        return {}
    rows = [
        (index, video_id, digest)
        for video_id, index, status, digest in zip(
            videos["video_id"].to_pylist(),
            videos["source_index"].to_pylist(),
            videos["status"].to_pylist(),
            videos["content_hash"].to_pylist(),
        )
        if status == OK and digest is not None
    ]
    first: dict[str, str] = {}
    duplicates = {}
    for _, video_id, digest in sorted(rows):
        kept = first.setdefault(digest, video_id)
        if kept != video_id:
            duplicates[video_id] = kept
    return duplicates


def mark_exact_duplicates(corpus: AnyPath | str) -> DedupSummary:
    """Mark later copies of the same file as duplicates and rewrite the corpus (only when there are any)."""
    corpus = location(corpus)
    with corpus_lock(corpus, "mark exact duplicates"):
        duplicates = exact_duplicates(corpus)
        summary = DedupSummary(exact_videos=len(duplicates))
        if duplicates:
            reasons = {video_id: f"the same file as {kept} (sha256)" for video_id, kept in duplicates.items()}

            def mark(group: int, tables: dict[str, pa.Table]) -> dict[str, pa.Table]:
                tables["videos"] = _mark_videos(tables["videos"], duplicates, dict.fromkeys(duplicates, 1.0), reasons)
                return tables

            summary.rewrite = rewrite_groups(corpus, mark)
    return summary


def dedup_corpus(
    corpus: AnyPath | str,
    threshold: float = DEFAULT_THRESHOLD,
    n_clusters: int | None = None,
    *,
    record: bool = True,
) -> DedupSummary:
    """Exact duplicates, then near-duplicate videos, then near-duplicate clips; one rewrite at the end,
    under the corpus's lock. record: keep the step in _state/ for groups a later build writes again
    (corpus/reapply.py), whether or not it found anything."""
    corpus = location(corpus)
    step = {"command": "dedup", "threshold": threshold, "n_clusters": n_clusters} if record else None
    with corpus_lock(corpus, "dedup"):
        summary = _dedup(corpus, threshold, n_clusters, step)
        if step is not None and summary.rewrite is None:
            record_step(corpus, step)  # nothing found now; groups written later are still to be deduped
    return summary


def _dedup(corpus: AnyPath, threshold: float, n_clusters: int | None, applied: dict | None) -> DedupSummary:
    exact = exact_duplicates(corpus)
    videos = _videos(corpus)
    ok_index = {
        index: video_id
        for video_id, index, status in zip(
            videos["video_id"].to_pylist(), videos["source_index"].to_pylist(), videos["status"].to_pylist()
        )
        if status == OK and video_id not in exact
    }
    priority = _video_priority(corpus)
    near_videos = _near_videos(corpus, ok_index, priority, threshold, n_clusters)
    left = {index: video_id for index, video_id in ok_index.items() if video_id not in near_videos}
    near_clips = _near_clips(corpus, left, priority, threshold, n_clusters)
    summary = DedupSummary(exact_videos=len(exact), near_videos=len(near_videos), near_clips=len(near_clips))
    if exact or near_videos or near_clips:
        reasons = {video_id: f"the same file as {kept} (sha256)" for video_id, kept in exact.items()}
        reasons |= {video_id: f"a near-duplicate of {kept}" for video_id, (kept, _) in near_videos.items()}
        kept_of = exact | {video_id: kept for video_id, (kept, _) in near_videos.items()}
        similarity = dict.fromkeys(exact, 1.0) | {video_id: sim for video_id, (_, sim) in near_videos.items()}

        def mark(group: int, tables: dict[str, pa.Table]) -> dict[str, pa.Table]:
            tables["videos"] = _mark_videos(tables["videos"], kept_of, similarity, reasons)
            tables["clips"] = _mark_clips(tables["clips"], near_clips)
            return tables

        summary.rewrite = rewrite_groups(corpus, mark, applied)
    return summary


def _video_priority(corpus: AnyPath) -> dict[str, float]:
    """Mean matched similarity of each video's document images (a video without any: -1)."""
    scores: dict[str, float] = {}
    for path in _parts(corpus, "documents"):
        part = _read(path, ["video_id", "image_info"])
        for video_id, images in zip(part["video_id"].to_pylist(), part["image_info"].to_pylist()):
            sims = [image["matched_sim"] for image in images]
            scores[video_id] = float(np.mean(sims)) if sims else -1.0
    return scores


def _embedding_parts(corpus: AnyPath, wanted: dict[int, str]) -> Iterator[tuple[pa.Table, dict[str, int]]]:
    """Each embeddings part with the source_index of its videos, for the videos in wanted only."""
    index_of = {video_id: index for index, video_id in wanted.items()}
    for path in _parts(corpus, "embeddings"):
        part = _read(path, ["video_id", "clip_idx", "embedding"])
        part = part.filter(pc.is_in(part["video_id"], pa.array(sorted(index_of), pa.string())))
        if len(part):
            yield part, index_of


def _embedded_keys(corpus: AnyPath, wanted: dict[int, str], columns: list[str]) -> set[tuple]:
    """The distinct (video_id[, clip_idx]) that have embeddings, reading those columns only."""
    videos = set(wanted.values())
    keys = set()
    for path in _parts(corpus, "embeddings"):
        part = _read(path, columns)
        keys |= {key for key in zip(*(part[c].to_pylist() for c in columns)) if key[0] in videos}
    return keys


def _mean_embeddings(part: pa.Table, keys: list) -> tuple[list, np.ndarray]:
    """Normalised mean embedding per distinct key (keys: one per row of part), in first-seen order."""
    vectors = np.stack([np.frombuffer(value, "<f2") for value in part["embedding"].to_pylist()]).astype(np.float32)
    order = list(dict.fromkeys(keys))
    position = {key: n for n, key in enumerate(order)}
    sums = np.zeros((len(order), vectors.shape[1]), np.float32)
    np.add.at(sums, [position[key] for key in keys], vectors)
    return order, sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)


def _near_videos(corpus, wanted, priority, threshold, n_clusters) -> dict[str, tuple[str, float]]:
    def batches() -> Iterator[Batch]:
        for part, index_of in _embedding_parts(corpus, wanted):
            videos, embeddings = _mean_embeddings(part, part["video_id"].to_pylist())
            ids = np.array([index_of[v] for v in videos], np.int64)
            yield Batch(ids, ids, np.array([priority.get(v, -1.0) for v in videos]), embeddings)

    n_items = len(_embedded_keys(corpus, wanted, ["video_id"]))
    found = find_duplicates(batches, n_items, threshold, n_clusters)
    return {wanted[dup]: (wanted[kept], sim) for dup, kept, sim in found}


def _near_clips(corpus, wanted, priority, threshold, n_clusters) -> dict[tuple[str, int], tuple[str, float]]:
    def batches() -> Iterator[Batch]:
        for part, index_of in _embedding_parts(corpus, wanted):
            keys = list(zip(part["video_id"].to_pylist(), part["clip_idx"].to_pylist()))
            clips, embeddings = _mean_embeddings(part, keys)
            groups = np.array([index_of[video_id] for video_id, _ in clips], np.int64)
            ids = (groups << CLIP_BITS) | np.array([clip_idx for _, clip_idx in clips], np.int64)
            yield Batch(ids, groups, np.array([priority.get(v, -1.0) for v, _ in clips]), embeddings)

    n_items = len(_embedded_keys(corpus, wanted, ["video_id", "clip_idx"]))
    mask = (1 << CLIP_BITS) - 1
    return {
        (wanted[dup >> CLIP_BITS], dup & mask): (f"{wanted[kept >> CLIP_BITS]}/{kept & mask}", sim)
        for dup, kept, sim in find_duplicates(batches, n_items, threshold, n_clusters)
    }


def _set(table: pa.Table, name: str, values: list, type_: pa.DataType) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, pa.array(values, type_))


def _mark_videos(table: pa.Table, kept_of: dict, similarity: dict, reasons: dict) -> pa.Table:
    """Videos in kept_of become duplicates of the one it names (status, duplicate_of, similarity, error)."""
    keys = table["video_id"].to_pylist()
    columns = {name: table[name].to_pylist() for name in ("status", "duplicate_of", "duplicate_similarity", "error")}
    for row, value in enumerate(keys):
        if value in kept_of:
            columns["status"][row] = DUPLICATE
            columns["duplicate_of"][row] = kept_of[value]
            columns["duplicate_similarity"][row] = similarity.get(value)
            columns["error"][row] = reasons[value]
    for name, type_ in (("status", pa.string()), ("duplicate_of", pa.string()), ("error", pa.string())):
        table = _set(table, name, columns[name], type_)
    return _set(table, "duplicate_similarity", columns["duplicate_similarity"], pa.float64())


def _mark_clips(clips: pa.Table, near: dict[tuple[str, int], tuple[str, float]]) -> pa.Table:
    statuses = clips["status"].to_pylist()
    kept, similarity = clips["duplicate_of"].to_pylist(), clips["duplicate_similarity"].to_pylist()
    for row, key in enumerate(zip(clips["video_id"].to_pylist(), clips["clip_idx"].to_pylist())):
        if key in near:
            statuses[row] = DUPLICATE
            kept[row], similarity[row] = near[key]
    clips = _set(clips, "status", statuses, pa.string())
    clips = _set(clips, "duplicate_of", kept, pa.string())
    return _set(clips, "duplicate_similarity", similarity, pa.float64())
