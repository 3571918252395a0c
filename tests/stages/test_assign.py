import io
import itertools

import numpy as np
import pytest
from PIL import Image
from scipy.optimize import linear_sum_assignment

from cosmo_data.schemas.config import AssignConfig, BuildConfig
from cosmo_data.schemas.records import (
    DOCUMENT_FAILED,
    FILTERED,
    Document,
    Frame,
    Sentence,
    VideoRecord,
)
from cosmo_data.stages.assign import (
    AssignStage,
    assign_mmc4,
    assign_ordered,
    assign_time_aware,
    near_duplicates,
    time_prior,
)


def upstream_mmc4(im2txt: np.ndarray) -> list[int]:
    """allenai/mmc4's procedure as its scripts do it: the cost matrix -sim padded to a square with a
    dummy cost of 1000, solved (lapjv there, an exact square solver here), dummy pairs dropped, then
    images left unassigned go to their argmax sentence."""
    n_images, n_sentences = im2txt.shape
    size = max(n_images, n_sentences)
    cost = np.full((size, size), 1000.0)
    cost[:n_images, :n_sentences] = -im2txt
    rows, cols = linear_sum_assignment(cost)
    pairs = {int(i): int(j) for i, j in zip(rows, cols) if i < n_images and j < n_sentences}
    return [pairs.get(i, int(np.argmax(im2txt[i]))) for i in range(n_images)]


def scene_jpeg(seed: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A smooth random picture, as video frames are: 8x6 random colours scaled up."""
    pixels = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def reencoded(jpeg: bytes, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def synthetic_document(rng: np.random.Generator):
    """Sentences with contiguous time spans; each image is shot during its true sentence. Every image
    is as similar to two confusable distractor sentences elsewhere in the video (a repeated step,
    a recurring object) as to its true one, plus noise."""
    n_sentences = int(rng.integers(8, 17))
    ends = np.cumsum(rng.uniform(2.0, 6.0, n_sentences))
    starts = np.concatenate([[0.0], ends[:-1]])
    n_images = n_sentences // 2
    truth = np.sort(rng.choice(n_sentences, n_images, replace=False))
    times = rng.uniform(starts[truth], ends[truth])
    sim = rng.normal(0.20, 0.03, (n_images, n_sentences))
    for image, true_sentence in enumerate(truth):
        others = [j for j in range(n_sentences) if j != true_sentence]
        distractors = rng.choice(others, 2, replace=False)
        sim[image, [true_sentence, *distractors]] += 0.08
    return sim, times.tolist(), list(zip(starts.tolist(), ends.tolist())), truth.tolist()


def test_mmc4_assignment_matches_the_upstream_procedure():
    rng = np.random.default_rng(7)
    for _ in range(400):
        sim = rng.uniform(-0.1, 0.5, (int(rng.integers(1, 9)), int(rng.integers(1, 9))))
        indices, matched = assign_mmc4(sim)
        assert indices == upstream_mmc4(sim)
        assert matched == [sim[i, j] for i, j in enumerate(indices)]
    # allenai/mmc4's own non-square check: 1.5 and 2.6 are paired, the third image joins its best sentence.
    assert assign_mmc4(np.array([[1.0, 1.0], [1.5, 1.0], [3.0, 2.6]]))[0] == [0, 0, 1]
    assert assign_mmc4(np.zeros((0, 4))) == ([], [])
    with pytest.raises(ValueError):
        assign_mmc4(np.zeros((2, 0)))


def test_time_prior_is_full_inside_the_span_and_decays_outside():
    prior = time_prior([5.0, 12.0], [(4.0, 6.0), (0.0, 2.0)], weight=0.2, scale_s=10.0)
    assert prior[0, 0] == pytest.approx(0.2)
    assert prior[0, 1] == pytest.approx(0.2 * np.exp(-0.3))
    assert prior[1, 0] == pytest.approx(0.2 * np.exp(-0.6))


def test_time_aware_without_weight_is_mmc4():
    rng = np.random.default_rng(3)
    for _ in range(50):
        sim, times, spans, _ = synthetic_document(rng)
        assert assign_time_aware(sim, times, spans, 0.0, 10.0) == assign_mmc4(sim)


def test_ordered_assignment_is_monotone_and_optimal():
    rng = np.random.default_rng(5)
    for _ in range(60):
        n_images, n_sentences = int(rng.integers(1, 5)), int(rng.integers(1, 6))
        sim = rng.uniform(0.0, 0.4, (n_images, n_sentences))
        times = rng.uniform(0, 30, n_images).tolist()
        spans = [(6.0 * j, 6.0 * j + 6.0) for j in range(n_sentences)]
        indices, matched = assign_ordered(sim, times, spans, 0.2, 10.0)
        order = np.argsort(times, kind="stable")
        in_time_order = [indices[i] for i in order]
        assert in_time_order == sorted(in_time_order)
        assert matched == [sim[i, j] for i, j in enumerate(indices)]
        score = sim + time_prior(times, spans, 0.2, 10.0)
        best = max(
            sum(score[image, j] for image, j in zip(order, path))
            for path in itertools.combinations_with_replacement(range(n_sentences), n_images)
        )
        assert sum(score[i, j] for i, j in enumerate(indices)) == pytest.approx(best)


def test_time_aware_and_ordered_beat_mmc4_on_documents_with_known_pairs(capsys):
    rng = np.random.default_rng(2024)
    defaults = AssignConfig()
    hits = {"mmc4": 0, "time": 0, "ordered": 0}
    total = 0
    for _ in range(300):
        sim, times, spans, truth = synthetic_document(rng)
        results = {
            "mmc4": assign_mmc4(sim)[0],
            "time": assign_time_aware(sim, times, spans, defaults.time_weight, defaults.time_scale_s)[0],
            "ordered": assign_ordered(sim, times, spans, defaults.time_weight, defaults.time_scale_s)[0],
        }
        for method, indices in results.items():
            hits[method] += sum(a == b for a, b in zip(indices, truth))
        total += len(truth)
    accuracy = {method: count / total for method, count in hits.items()}
    with capsys.disabled():
        print(f"\nassignment accuracy over 300 synthetic documents ({total} images): {accuracy}")
    assert accuracy["mmc4"] < 0.6  # the distractors really confuse similarity alone
    assert accuracy["time"] > accuracy["mmc4"] + 0.2
    assert accuracy["ordered"] > accuracy["mmc4"] + 0.2


def test_near_duplicates_are_the_same_picture_not_merely_the_same_colour():
    scene = scene_jpeg(1)
    frames = [scene, reencoded(scene, 40), scene_jpeg(2), solid_jpeg("red"), solid_jpeg("blue")]
    assert near_duplicates(frames, 0.96) == [1]
    assert near_duplicates(frames, 0.96, scores=[0.2, 0.3, 0.2, 0.2, 0.2]) == [0]  # the better match stays
    assert near_duplicates(frames, 1.01) == []


def solid_jpeg(color: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def assigned_record(sim: np.ndarray, jpegs: list[bytes], times: list[float], n_sentences: int) -> VideoRecord:
    record = VideoRecord("vid_a", "/videos/a.mp4", 0)
    record.frames = [Frame(0, k, t, 32, 24, jpeg, f"frame {k}") for k, (jpeg, t) in enumerate(zip(jpegs, times))]
    sentences = [Sentence(f"sentence {j}.", 4.0 * j, 4.0 * j + 4.0, "asr") for j in range(n_sentences)]
    record.document = Document("vid_a", sentences, list(range(len(jpegs))), sim.tolist())
    return record


def config_with(**assign) -> BuildConfig:
    return BuildConfig.model_validate({"assign": assign})


def test_filters_drop_duplicates_low_similarity_and_extra_images_and_count_them():
    first = scene_jpeg(10)
    jpegs = [first, scene_jpeg(11), reencoded(first, 50), scene_jpeg(12), scene_jpeg(13), scene_jpeg(14)]
    sim = np.array(
        [
            [0.30, 0.10, 0.10, 0.10],
            [0.10, 0.28, 0.10, 0.10],
            [0.31, 0.10, 0.10, 0.10],  # near-duplicate of frame 0, a better match: frame 0 goes
            [0.05, 0.05, 0.12, 0.05],  # best match 0.12 < 0.15
            [0.10, 0.10, 0.26, 0.10],
            [0.10, 0.10, 0.10, 0.20],  # the weakest of four: over max_images=3
        ]
    )
    record = assigned_record(sim, jpegs, [1.0, 5.0, 6.0, 9.0, 10.0, 13.0], 4)
    [out] = AssignStage(config_with(max_images=3)).process([record])

    assert out.ok, out.error
    document = out.document
    assert out.counters == {"dropped_near_duplicate": 1, "dropped_low_similarity": 1, "dropped_max_images": 1}
    assert document.image_frames == [1, 2, 4]
    assert document.matched_text_index == [1, 0, 2]
    assert document.matched_sim == [0.28, 0.31, 0.26]
    assert document.similarity == sim[[1, 2, 4]].tolist()
    assert document.assignment == "mmc4"


@pytest.mark.parametrize("method", ["mmc4", "time", "ordered"])
def test_stored_matrix_reproduces_the_stored_assignment_after_filtering(method):
    rng = np.random.default_rng(11)
    settings = AssignConfig(method=method, min_similarity=0.2, max_images=5)
    stage = AssignStage(config_with(method=method, min_similarity=0.2, max_images=5))
    checked = 0
    for doc in range(40):
        n_images, n_sentences = int(rng.integers(1, 12)), int(rng.integers(1, 8))
        sim = rng.uniform(0.0, 0.45, (n_images, n_sentences))
        times = np.sort(rng.uniform(0, 4.0 * n_sentences, n_images)).tolist()
        jpegs = [scene_jpeg(1000 * doc + k) for k in range(n_images)]
        [out] = stage.process([assigned_record(sim, jpegs, times, n_sentences)])
        if not out.ok:
            assert out.status == FILTERED and out.counters["dropped_too_few_images"] == 1
            continue
        document = out.document
        stored = np.array(document.similarity)
        kept_times = [out.frames[f].t_s for f in document.image_frames]
        spans = [(s.start_s, s.end_s) for s in document.sentences]
        if method == "mmc4":
            recomputed = assign_mmc4(stored)
        elif method == "time":
            recomputed = assign_time_aware(stored, kept_times, spans, settings.time_weight, settings.time_scale_s)
        else:
            recomputed = assign_ordered(stored, kept_times, spans, settings.time_weight, settings.time_scale_s)
        assert recomputed == (document.matched_text_index, document.matched_sim)
        assert len(document.image_frames) <= 5 and min(document.matched_sim) >= 0.2
        assert document.assignment == method
        checked += 1
    assert checked >= 20


def test_documents_with_too_few_images_or_sentences_are_filtered():
    sim = np.array([[0.05, 0.02]])
    [out] = AssignStage(config_with(min_images=1)).process([assigned_record(sim, [scene_jpeg(1)], [1.0], 2)])
    assert out.status == FILTERED and "fewer than min_images=1" in out.error
    assert out.filter_reason == "assign_min_images"
    assert out.counters == {"dropped_low_similarity": 1, "dropped_too_few_images": 1}

    [out] = AssignStage(config_with(min_sentences=3)).process([assigned_record(sim, [scene_jpeg(1)], [1.0], 2)])
    assert out.status == FILTERED and "2 sentences, fewer than min_sentences=3" in out.error
    assert out.filter_reason == "assign_min_sentences"
    assert out.counters == {"dropped_too_few_sentences": 1}


def test_a_similarity_matrix_of_the_wrong_shape_fails_the_record_with_a_clear_error():
    record = assigned_record(np.full((2, 3), 0.3), [scene_jpeg(1), scene_jpeg(2)], [1.0, 2.0], 3)
    record.document.similarity = []
    [out] = AssignStage(BuildConfig()).process([record])
    assert out.status == DOCUMENT_FAILED
    assert out.error == (
        "assign: similarity matrix has shape [0] but the document has 2 images and 3 sentences "
        "(did ClipScoreStage run?)"
    )
