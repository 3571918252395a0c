"""CLIP image-sentence similarity with a tiny random open_clip model."""

from __future__ import annotations

import io

import open_clip
import pytest
import torch
from PIL import Image, ImageDraw

from cosmo_data import models
from cosmo_data.models import TINY_CLIP, load_open_clip
from cosmo_data.schemas.config import BuildConfig
from cosmo_data.schemas.records import (
    CLIP_SCORE_FAILED,
    OK,
    Document,
    Frame,
    Sentence,
    VideoRecord,
)
from cosmo_data.stages.clip_score import ClipScoreStage

SENTENCES = ["a red circle on a white wall", "we cut the onions into thin slices", "a red circle on a white wall"]


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(models.CACHE_ENV, str(tmp_path_factory.mktemp("cosmo-cache")))
        yield


def jpeg(color: tuple[int, int, int], stripes: int) -> bytes:
    image = Image.new("RGB", (128, 96), color)
    draw = ImageDraw.Draw(image)
    for k in range(stripes):
        draw.rectangle((k * 20, 0, k * 20 + 8, 96), fill=(255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


FRAMES = [jpeg((220, 20, 20), 0), jpeg((20, 20, 220), 4), jpeg((220, 20, 20), 0)]  # first == last


def video(index: int, jpegs: list[bytes] = FRAMES, texts: list[str] = SENTENCES, image_frames=None) -> VideoRecord:
    frames = [Frame(clip_idx=i, frame_idx=i, t_s=2.0 * i, width=128, height=96, jpeg=d) for i, d in enumerate(jpegs)]
    sentences = [Sentence(text=t, start_s=2.0 * j, end_s=2.0 * j + 1, source="asr") for j, t in enumerate(texts)]
    document = Document(doc_id=f"v{index}", sentences=sentences, image_frames=list(image_frames or []))
    return VideoRecord(
        video_id=f"v{index}", source=f"v{index}.mp4", source_index=index, frames=frames, document=document
    )


def scoring_stage(batch_size: int = 16) -> ClipScoreStage:
    stage = ClipScoreStage(
        BuildConfig.model_validate(
            {"clip_score": {"model": TINY_CLIP, "pretrained": None, "resources": {"gpus": 0, "batch_size": batch_size}}}
        )
    )
    stage.setup()
    return stage


@pytest.fixture(scope="module")
def stage() -> ClipScoreStage:
    return scoring_stage()


def test_similarity_matrix_covers_every_image_and_sentence(stage):
    [record] = stage.process([video(0)])
    assert record.status == OK
    similarity = record.document.similarity
    assert record.document.image_frames == [0, 1, 2]
    assert len(similarity) == 3 and all(len(row) == 3 for row in similarity)
    assert all(isinstance(value, float) and -1.0 <= value <= 1.0 for row in similarity for value in row)
    assert record.timings["clip_score"] > 0


def test_identical_inputs_score_identically_and_different_ones_do_not(stage):
    first, second = stage.process([video(0), video(1)])
    assert first.document.similarity == second.document.similarity  # deterministic
    rows = first.document.similarity
    assert rows[0] == pytest.approx(rows[2], abs=1e-6)  # same picture
    assert [row[0] for row in rows] == pytest.approx([row[2] for row in rows], abs=1e-6)  # same sentence
    # The model looks at pixels and words: different images / sentences give different scores.
    assert max(abs(a - b) for a, b in zip(rows[0], rows[1])) > 1e-3
    assert max(abs(row[0] - row[1]) for row in rows) > 1e-3


def test_scores_are_open_clip_cosine_similarities(stage):
    """Same numbers as open_clip's own preprocessing, encoders and normalisation, computed directly."""
    [record] = stage.process([video(0)])
    clip = load_open_clip(TINY_CLIP, None, "cpu", fp16=False)
    with torch.no_grad():
        pixels = torch.stack([clip.preprocess(Image.open(io.BytesIO(data)).convert("RGB")) for data in FRAMES])
        images = clip.model.encode_image(pixels, normalize=True)
        texts = clip.model.encode_text(open_clip.get_tokenizer(TINY_CLIP)(SENTENCES), normalize=True)
    expected = (images @ texts.T).tolist()
    for row, expected_row in zip(record.document.similarity, expected):
        assert row == pytest.approx(expected_row, abs=0.5e-4 + 1e-6)  # stored rounded to 4 decimals


def test_batching_does_not_change_scores(stage):
    one_at_a_time = scoring_stage(batch_size=1).process([video(0), video(1, FRAMES[:2], SENTENCES[:1])])
    together = stage.process([video(0), video(1, FRAMES[:2], SENTENCES[:1])])
    for a, b in zip(one_at_a_time, together):
        assert len(a.document.similarity) == len(b.document.similarity)
        for row_a, row_b in zip(a.document.similarity, b.document.similarity):
            assert row_a == pytest.approx(row_b, abs=1e-5)


def test_chosen_images_are_scored_in_their_order(stage):
    full, chosen = stage.process([video(0), video(1, image_frames=[1, 0])])
    assert chosen.document.image_frames == [1, 0]
    assert chosen.document.similarity[0] == pytest.approx(full.document.similarity[1], abs=1e-6)
    assert chosen.document.similarity[1] == pytest.approx(full.document.similarity[0], abs=1e-6)


def test_records_without_document_or_sentences_pass_through(stage):
    no_document = video(0)
    no_document.document = None
    no_sentences = video(1, texts=[])
    no_frames = video(2, jpegs=[])
    stage.process([no_document, no_sentences, no_frames])
    assert [r.status for r in (no_document, no_sentences, no_frames)] == [OK, OK, OK]
    assert no_document.document is None
    assert no_sentences.document.similarity == [] and no_frames.document.similarity == []


def test_unreadable_keyframe_fails_with_clip_score_failed(stage):
    bad, good = stage.process([video(0, [FRAMES[0], b"\xff\xd8 truncated"]), video(1)])
    assert bad.status == CLIP_SCORE_FAILED
    assert bad.error.startswith("keyframe 1 of v0.mp4 is not a readable JPEG")
    assert bad.document is None
    assert good.status == OK and len(good.document.similarity) == 3


def test_images_and_sentences_per_forward_bound_what_is_held_at_once(stage, monkeypatch):
    """resources.batch_size is videos per call; clip_score.images_per_forward and sentences_per_forward
    bound each forward pass, and images are decoded only for the pass that takes them."""
    from cosmo_data.stages import clip_score as clip_score_module

    bounded = ClipScoreStage(
        BuildConfig.model_validate(
            {
                "clip_score": {
                    "model": TINY_CLIP,
                    "pretrained": None,
                    "images_per_forward": 2,
                    "sentences_per_forward": 2,
                    "resources": {"gpus": 0, "batch_size": 8},
                }
            }
        )
    )
    bounded.setup()
    decoded: list[int] = []
    open_frame = clip_score_module.open_frame
    monkeypatch.setattr(clip_score_module, "open_frame", lambda *args: decoded.append(1) or open_frame(*args))
    image_calls: list[tuple[int, int]] = []
    text_calls: list[int] = []
    encode_image, encode_text = bounded.clip.model.encode_image, bounded.clip.model.encode_text

    def watched_image(pixels):
        image_calls.append((len(pixels), len(decoded)))
        return encode_image(pixels)

    def watched_text(tokens):
        text_calls.append(len(tokens))
        return encode_text(tokens)

    monkeypatch.setattr(bounded.clip.model, "encode_image", watched_image)
    monkeypatch.setattr(bounded.clip.model, "encode_text", watched_text)
    records = bounded.process([video(0), video(1, FRAMES[:2], SENTENCES[:2])])
    assert [r.status for r in records] == [OK, OK]
    assert image_calls == [(2, 2), (2, 4), (1, 5)]  # 3 + 2 images, each pair decoded just before its pass
    assert text_calls == [2, 2, 1]  # 3 + 2 sentences
    unbounded = stage.process([video(0), video(1, FRAMES[:2], SENTENCES[:2])])
    for a, b in zip(records, unbounded):
        assert len(a.document.similarity) == len(b.document.similarity)
        for row_a, row_b in zip(a.document.similarity, b.document.similarity):
            assert row_a == pytest.approx(row_b, abs=1e-5)
