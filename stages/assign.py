"""AssignStage: place each kept keyframe before one sentence of its document.

Three methods (config.assign.method):
- "mmc4": allenai/mmc4 scripts/compute_assignments.py. Cost = -similarity, one image per sentence by
  optimal bipartite assignment; when images outnumber sentences, the images left over go to their most
  similar sentence. That script has no threshold step: MMC4 drops low-similarity images elsewhere, and
  OpenFlamingo drops them at load time by matched_sim; here min_similarity is applied below.
  We solve with scipy's rectangular linear_sum_assignment instead of lapjv on a matrix padded with a
  dummy cost: the same optimum.
- "time": the same assignment on similarity + a time prior that favours sentences spoken (or captioned)
  near the frame's time.
- "ordered": sentence indices non-decreasing in frame time order, maximising similarity + time prior
  (dynamic programming), so the document never shows a frame before text that came earlier.

Filters, in this order, each counted on the record:
1. near-duplicate keyframes (dropped_near_duplicate): of frames whose 16x16 thumbnails are at least
   dedup_similarity alike, only the one most similar to some sentence stays. A pixel comparison of the
   downscaled JPEGs, because the CLIP image embeddings are not on the record. It does not depend on the
   assignment, so it runs first.
2. assignment, then images whose matched similarity is below min_similarity (dropped_low_similarity)
   or beyond max_images, keeping the best matched (dropped_max_images); after any drop the assignment is
   recomputed on what is left, until nothing changes. So the stored matrix [kept images][sentences]
   reproduces the stored matched_text_index: for "mmc4", assign_mmc4(stored matrix) gives it exactly.
3. documents with fewer than min_sentences sentences or min_images images are FILTERED
   (dropped_too_few_sentences / dropped_too_few_images).
matched_sim is always the raw CLIP similarity, never the prior-adjusted score.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from cosmo_data.schemas.config import AssignConfig, BuildConfig
from cosmo_data.schemas.records import (
    DOCUMENT_FAILED,
    FILTERED,
    Document,
    VideoFailure,
    VideoRecord,
)
from cosmo_data.stages.base import process_each, resources_from

THUMBNAIL_SIZE = 16


def assign_mmc4(sim: np.ndarray) -> tuple[list[int], list[float]]:
    """MMC4's get_image_assignments on an [images][sentences] matrix: (matched_text_index, matched_sim)."""
    sim = np.asarray(sim, dtype=np.float64)
    if sim.size == 0 and (sim.ndim != 2 or sim.shape[0] == 0):
        return [], []
    if sim.ndim != 2 or sim.shape[1] == 0:
        raise ValueError(f"cannot assign images with a similarity matrix of shape {list(sim.shape)}")
    from scipy.optimize import linear_sum_assignment  # here, not at the top: the driver never needs it

    n_images = sim.shape[0]
    image_rows, sentence_cols = linear_sum_assignment(-sim)
    matched = dict(zip(image_rows.tolist(), sentence_cols.tolist()))
    # More images than sentences: the unassigned ones join their most similar sentence.
    for image in range(n_images):
        if image not in matched:
            matched[image] = int(np.argmax(sim[image]))
    indices = [matched[image] for image in range(n_images)]
    return indices, [float(sim[image, j]) for image, j in enumerate(indices)]


def time_prior(
    image_times: Sequence[float], sentence_spans: Sequence[tuple[float, float]], weight: float, scale_s: float
) -> np.ndarray:
    """[images][sentences] bonus weight * exp(-gap / scale_s), gap = seconds from the frame to the span."""
    times = np.asarray(image_times, dtype=np.float64).reshape(-1, 1)
    spans = np.asarray(sentence_spans, dtype=np.float64).reshape(-1, 2)
    starts, ends = spans[:, 0].reshape(1, -1), spans[:, 1].reshape(1, -1)
    gap = np.maximum(starts - times, 0.0) + np.maximum(times - ends, 0.0)
    return weight * np.exp(-gap / scale_s)


def assign_time_aware(
    sim: np.ndarray,
    image_times: Sequence[float],
    sentence_spans: Sequence[tuple[float, float]],
    weight: float,
    scale_s: float,
) -> tuple[list[int], list[float]]:
    """MMC4's assignment on similarity + time prior; matched_sim stays the raw similarity."""
    sim = np.asarray(sim, dtype=np.float64)
    if sim.size == 0:
        return assign_mmc4(sim)
    indices, _ = assign_mmc4(sim + time_prior(image_times, sentence_spans, weight, scale_s))
    return indices, [float(sim[image, j]) for image, j in enumerate(indices)]


def assign_ordered(
    sim: np.ndarray,
    image_times: Sequence[float],
    sentence_spans: Sequence[tuple[float, float]],
    weight: float,
    scale_s: float,
) -> tuple[list[int], list[float]]:
    """Sentence indices non-decreasing in image time order, maximising the total of similarity + prior.

    Several images may share a sentence (unlike MMC4); ties between equal paths go to earlier sentences.
    """
    sim = np.asarray(sim, dtype=np.float64)
    if sim.size == 0:
        return assign_mmc4(sim)
    n_images, n_sentences = sim.shape
    order = np.argsort(np.asarray(image_times, dtype=np.float64), kind="stable")
    score = (sim + time_prior(image_times, sentence_spans, weight, scale_s))[order]
    # best[j]: the best total for the images so far with the last one on sentence j.
    best = score[0].copy()
    came_from = np.zeros((n_images, n_sentences), dtype=np.int64)
    for step in range(1, n_images):
        prefix_arg = _running_argmax(best)
        came_from[step] = prefix_arg
        best = best[prefix_arg] + score[step]
    path = [int(np.argmax(best))]
    for step in range(n_images - 1, 0, -1):
        path.append(int(came_from[step, path[-1]]))
    path.reverse()
    indices = [0] * n_images
    for position, image in enumerate(order.tolist()):
        indices[image] = path[position]
    return indices, [float(sim[image, j]) for image, j in enumerate(indices)]


def _running_argmax(values: np.ndarray) -> np.ndarray:
    """For each j, the index of the largest of values[0..j] (the first one on ties)."""
    new_record = np.ones(len(values), dtype=bool)
    new_record[1:] = values[1:] > np.maximum.accumulate(values)[:-1]
    return np.maximum.accumulate(np.where(new_record, np.arange(len(values)), 0))


def thumbnail(jpeg: bytes) -> np.ndarray:
    """16x16 RGB thumbnail; draft() lets libjpeg decode at 1/8 scale, so this stays cheap."""
    with Image.open(io.BytesIO(jpeg)) as image:
        image.draft("RGB", (THUMBNAIL_SIZE * 4, THUMBNAIL_SIZE * 4))
        small = image.convert("RGB").resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.BOX)
        return np.asarray(small, dtype=np.float32)


def thumbnail_similarity(a: np.ndarray, b: np.ndarray) -> float:
    return float(1.0 - np.mean(np.abs(a - b)) / 255.0)


def near_duplicates(jpegs: Sequence[bytes], threshold: float, scores: Sequence[float] | None = None) -> list[int]:
    """Positions of frames at least `threshold` alike to a kept one, in order.

    Frames are visited from the highest score down (earlier first on ties), so of a group of
    look-alikes the one that best matches some sentence stays.
    """
    order = sorted(range(len(jpegs)), key=lambda k: -scores[k]) if scores is not None else range(len(jpegs))
    kept: list[np.ndarray] = []
    duplicates = []
    for position in order:
        thumb = thumbnail(jpegs[position])
        if any(thumbnail_similarity(thumb, other) >= threshold for other in kept):
            duplicates.append(position)
        else:
            kept.append(thumb)
    return sorted(duplicates)


def assign(
    settings: AssignConfig, sim: np.ndarray, image_times: list[float], sentence_spans: list[tuple[float, float]]
) -> tuple[list[int], list[float]]:
    """Run the configured method."""
    if settings.method == "mmc4":
        return assign_mmc4(sim)
    if settings.method == "time":
        return assign_time_aware(sim, image_times, sentence_spans, settings.time_weight, settings.time_scale_s)
    return assign_ordered(sim, image_times, sentence_spans, settings.time_weight, settings.time_scale_s)


class AssignStage:
    name = "assign"

    def __init__(self, config: BuildConfig):
        self.settings = config.assign
        resources = config.assign.resources
        self.resources = resources_from(resources)
        self.batch_size = resources.batch_size

    def setup(self) -> None:
        # The solver's import (0.5 s) belongs to the worker's start, not to its first video.
        import scipy.optimize  # noqa: F401

    def process(self, batch: list[VideoRecord]) -> list[VideoRecord]:
        return process_each(batch, self._assign, stage=self.name, failure_status=DOCUMENT_FAILED)

    def _assign(self, record: VideoRecord) -> None:
        document = record.document
        if document is None:
            raise VideoFailure(DOCUMENT_FAILED, "assign: the record has no document (DocumentStage did not run)")
        settings = self.settings
        if len(document.sentences) < settings.min_sentences:
            record.count("too_few_sentences")
            raise VideoFailure(
                FILTERED,
                f"document has {len(document.sentences)} sentences, fewer than min_sentences={settings.min_sentences}",
                "assign_min_sentences",
            )
        sim = _similarity_matrix(document)
        frames = list(document.image_frames)
        best_match = sim.max(axis=1).tolist() if sim.size else []
        jpegs = [record.frames[f].jpeg for f in frames]
        duplicates = set(near_duplicates(jpegs, settings.dedup_similarity, best_match))
        record.count("near_duplicate", len(duplicates))
        rows = [r for r in range(len(frames)) if r not in duplicates]
        times = [record.frames[f].t_s for f in frames]
        rows, indices, matched = self._assign_and_filter(record, sim, times, rows, document)

        if len(rows) < settings.min_images:
            record.count("too_few_images")
            raise VideoFailure(
                FILTERED,
                f"document keeps {len(rows)} images, fewer than min_images={settings.min_images}",
                "assign_min_images",
            )
        document.image_frames = [frames[r] for r in rows]
        document.similarity = sim[rows].tolist()
        document.matched_text_index = indices
        document.matched_sim = matched
        document.assignment = settings.method

    def _assign_and_filter(
        self, record: VideoRecord, sim: np.ndarray, times: list[float], rows: list[int], document: Document
    ) -> tuple[list[int], list[int], list[float]]:
        """Assign, drop weak or surplus images, and assign again until nothing is dropped.

        The final assignment is computed on exactly the rows kept, so it is what the stored matrix gives.
        """
        settings = self.settings
        spans = [(s.start_s, s.end_s) for s in document.sentences]
        while True:
            indices, matched = assign(settings, sim[rows], [times[r] for r in rows], spans)
            low = {k for k, value in enumerate(matched) if value < settings.min_similarity}
            if low:
                record.count("low_similarity", len(low))
                rows = [r for k, r in enumerate(rows) if k not in low]
            elif len(rows) > settings.max_images:
                # Keep the best matched images; the stable sort keeps earlier frames on ties.
                best = sorted(range(len(rows)), key=lambda k: -matched[k])[: settings.max_images]
                record.count("max_images", len(rows) - settings.max_images)
                rows = [rows[k] for k in sorted(best)]
            else:
                return rows, indices, matched


def _similarity_matrix(document: Document) -> np.ndarray:
    """The ClipScoreStage matrix as [images][sentences], checked against the document's shape."""
    n_images, n_sentences = len(document.image_frames), len(document.sentences)
    if n_images == 0:
        return np.zeros((0, n_sentences))
    sim = np.asarray(document.similarity, dtype=np.float64)
    if sim.shape != (n_images, n_sentences):
        raise VideoFailure(
            DOCUMENT_FAILED,
            f"assign: similarity matrix has shape {list(sim.shape)} but the document has {n_images} images "
            f"and {n_sentences} sentences (did ClipScoreStage run?)",
        )
    return sim
