"""Keyframe captions with tiny random CoCa (open_clip) and BLIP (transformers) models."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageDraw

from cosmo_data import models
from cosmo_data.models import TINY_BLIP, TINY_CLIP, TINY_COCA, ModelError
from cosmo_data.schemas.config import BuildConfig
from cosmo_data.schemas.records import CAPTION_FAILED, OK, Frame, VideoRecord
from cosmo_data.stages.caption import CaptionStage

COCA = {"backend": "open_clip", "model": TINY_COCA, "pretrained": None, "max_tokens": 8}
BLIP = {"backend": "hf", "model": TINY_BLIP, "pretrained": None, "max_tokens": 6}


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(models.CACHE_ENV, str(tmp_path_factory.mktemp("cosmo-cache")))
        yield


def jpeg(color: tuple[int, int, int], shape: str) -> bytes:
    image = Image.new("RGB", (96, 64), color)
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse((20, 8, 68, 56), fill=(255, 255, 255))
    else:
        draw.rectangle((10, 10, 50, 40), fill=(0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def video(index: int, jpegs: list[bytes]) -> VideoRecord:
    frames = [
        Frame(clip_idx=i, frame_idx=i, t_s=float(i), width=96, height=64, jpeg=data) for i, data in enumerate(jpegs)
    ]
    return VideoRecord(video_id=f"v{index}", source=f"video{index}.mp4", source_index=index, frames=frames)


def batch() -> list[VideoRecord]:
    return [
        video(0, [jpeg((200, 30, 30), "circle"), jpeg((30, 30, 200), "box")]),
        video(1, [jpeg((30, 160, 30), "box")]),
        video(2, []),
    ]


def captioned(section: dict, **resources) -> list[VideoRecord]:
    stage = CaptionStage(BuildConfig.model_validate({"caption": {**section, "resources": {"gpus": 0, **resources}}}))
    stage.setup()
    return stage.process(batch())


def captions(records: list[VideoRecord]) -> list[list[str | None]]:
    return [[frame.caption for frame in record.frames] for record in records]


def test_coca_captions_every_keyframe(cache):
    records = captioned(COCA, batch_size=2)  # three keyframes: two forward passes across videos
    assert [r.status for r in records] == [OK, OK, OK]
    texts = [text for per_video in captions(records) for text in per_video]
    assert len(texts) == 3
    for text in texts:
        assert isinstance(text, str) and text.strip() == text and text
        assert "<start_of_text>" not in text and "<end_of_text>" not in text
    assert len(set(texts)) > 1, "different images, different captions: the decoder sees the image"
    assert records[2].frames == [] and "caption" in records[0].timings


def test_coca_captions_do_not_depend_on_batching(cache):
    assert captions(captioned(COCA, batch_size=1)) == captions(captioned(COCA, batch_size=16))


@pytest.mark.parametrize("prompt", [None, "a picture of"])
def test_hf_captioner_captions_every_keyframe(cache, prompt):
    records = captioned({**BLIP, "prompt": prompt}, batch_size=2)
    assert [r.status for r in records] == [OK, OK, OK]
    texts = [text for per_video in captions(records) for text in per_video]
    assert len(texts) == 3 and all(isinstance(text, str) and text for text in texts)
    assert len(set(texts)) > 1
    if prompt:
        assert not any(text.startswith(prompt) for text in texts)


def test_unreadable_keyframe_fails_only_its_video(cache):
    stage = CaptionStage(BuildConfig.model_validate({"caption": {**COCA, "resources": {"gpus": 0}}}))
    stage.setup()
    good, bad = video(0, [jpeg((10, 10, 10), "box")]), video(1, [jpeg((90, 90, 90), "circle"), b"not a jpeg"])
    stage.process([good, bad])
    assert good.status == OK and good.frames[0].caption
    assert bad.status == CAPTION_FAILED
    assert bad.error.startswith("keyframe 1 of video1.mp4 is not a readable JPEG: cannot identify image file")


def test_a_model_without_caption_decoder_is_refused(cache):
    stage = CaptionStage(
        BuildConfig.model_validate({"caption": {**COCA, "model": TINY_CLIP, "resources": {"gpus": 0}}})
    )
    with pytest.raises(ModelError, match="cannot caption: only CoCa models have a text decoder"):
        stage.setup()


def test_images_per_forward_bounds_the_keyframes_decoded_at_once(cache, monkeypatch):
    """resources.batch_size is videos per call; caption.images_per_forward is how many keyframes are
    decoded and captioned at once: each chunk is decoded just before its forward pass."""
    from cosmo_data.stages import caption as caption_module

    stage = CaptionStage(
        BuildConfig.model_validate(
            {"caption": {**COCA, "images_per_forward": 2, "resources": {"gpus": 0, "batch_size": 8}}}
        )
    )
    stage.setup()
    decoded: list[int] = []
    open_frame = caption_module.open_frame
    monkeypatch.setattr(caption_module, "open_frame", lambda *args: decoded.append(1) or open_frame(*args))
    calls: list[tuple[int, int]] = []
    caption = stage.captioner.caption

    def watched(images):
        calls.append((len(images), len(decoded)))
        return caption(images)

    stage.captioner.caption = watched
    many = batch() + [video(3, [jpeg((90, 90, 20), "circle"), jpeg((20, 90, 90), "box")])]
    records = stage.process(many)
    assert [r.status for r in records] == [OK] * 4
    # Five keyframes: forwards of 2, 2 and 1, each decoded only when its forward came.
    assert calls == [(2, 2), (2, 4), (1, 5)]
    unbounded = CaptionStage(
        BuildConfig.model_validate(
            {"caption": {**COCA, "images_per_forward": 64, "resources": {"gpus": 0, "batch_size": 8}}}
        )
    )
    unbounded.setup()
    again = batch() + [video(3, [jpeg((90, 90, 20), "circle"), jpeg((20, 90, 90), "box")])]
    assert captions(records) == captions(unbounded.process(again))
