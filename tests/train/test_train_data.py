"""The data stream: each layout read as the trainers' loaders read it, broken samples skipped and
counted, and a stream restarted from a saved position continuing exactly where it was."""

from __future__ import annotations

import base64
import copy
import io
import json
import random

import pytest
import torch
import webdataset as wds
from conftest import TINY, read_samples
from loaders import cosmo_interleaved_video

from cosmo_data.schemas.corpus_layout import cosmo_frames_read
from cosmo_data.train.config import TrainError, load_train_config
from cosmo_data.train.data import Collator, eval_batches, fresh_state, role_batches
from cosmo_data.train.samples import DECODERS, clip_frame_indices, video_info
from cosmo_data.train.shards import resolve_sources
from cosmo_data.train.weights import END_OF_CHUNK, VISUAL_TOKEN

DATA = load_train_config(TINY).data


def _stream(pretrained, specs, state=None, data=DATA):
    sources = resolve_sources(specs, [])
    collator = Collator(pretrained.tokenizer, pretrained.to_pixels, data, pretrained.media_token_ids, 64)
    state = state if state is not None else fresh_state(sources)
    return role_batches(sources, collator, data, "7/0/0", state), state


def _check_batch(batch, pretrained):
    media_marks = torch.isin(batch["input_ids"], torch.tensor(pretrained.media_token_ids)).sum(dim=1)
    assert torch.equal(media_marks, batch["frame_mask"].any(dim=-1).sum(dim=1))  # one media per mark
    assert (media_marks >= 1).all()
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    assert batch["media"].shape[-3:] == (3, 64, 64)  # the tower's own transform
    assert batch["media"].dtype == torch.uint8


def test_cosmo_samples_follow_cosmos_loader(corpus, pretrained):
    """Same clips and captions as COSMO's reader (tests/loaders.py), frames among those it may take."""
    tar = corpus / "cosmo" / "000000.tar"
    reference = list(cosmo_interleaved_video([str(tar)]))
    for sample, expected in zip(read_samples(tar), reference):
        example = DECODERS["cosmo"](sample, DATA, random.Random(0))
        assert example.text == "".join(f"{VISUAL_TOKEN}{c}{END_OF_CHUNK}" for c in expected.captions[: DATA.max_media])
        assert all(len(frames) == DATA.frames_per_clip for frames in example.media)
        fps, n_frames = video_info(sample["mp4"])
        meta = json.loads(sample["json"])
        for clip in json.loads(meta["clips"]):
            start, end = (
                sum(int(p) * 60**k for k, p in enumerate(reversed(t.split(":")))) for t in clip["clip"].split(" - ")
            )
            allowed = set(cosmo_frames_read(start, end, fps, n_frames))
            for seed in range(20):
                chosen = clip_frame_indices(start, end, meta["video_speed"], fps, n_frames, 3, random.Random(seed))
                assert set(chosen) <= allowed


def test_each_layout_and_a_weighted_mixture_make_batches(corpus, pretrained):
    for layout in ("cosmo", "mmc4", "native"):
        batches, state = _stream(pretrained, [str(corpus / layout)])
        for _ in range(3):
            batch, _ = next(batches)
            _check_batch(batch, pretrained)
        assert state["skipped"] == 0
    frames_per_media = []
    batches, state = _stream(pretrained, [f"video=3:{corpus / 'cosmo'}", f"web=1:{corpus / 'mmc4'}"])
    for _ in range(6):
        batch, _ = next(batches)
        _check_batch(batch, pretrained)
        frames_per_media += batch["frame_mask"].sum(-1)[batch["frame_mask"].any(-1)].tolist()
    # Clips carry 3 frames, images 1: both sources are in the mix, video about 3 times as often.
    assert frames_per_media.count(3) > frames_per_media.count(1) > 0
    assert state["sources"]["video"][0] > 0 and state["sources"]["web"][0] > 0


def test_broken_samples_are_skipped_and_counted(corrupt_folder, pretrained):
    batches, state = _stream(pretrained, [str(corrupt_folder)])
    for _ in range(4):
        batch, position = next(batches)
        _check_batch(batch, pretrained)
    assert position["skipped"] >= 3
    assert position["skipped"] == state["skipped"]
    skips = position["skips"][corrupt_folder.name]  # bad json, an index past the text, a tiny non-JPEG
    assert skips["bad_metadata"] >= 2 and skips["no_media"] >= 1  # the 10-byte "image" is under min_image_kb
    assert sum(skips.values()) == position["skipped"]


def _all_bad_source(corpus, folder):
    """mmc4 samples whose images are not JPEGs, and a tar cut mid-member: every sample is skipped."""
    folder.mkdir()
    samples = read_samples(corpus / "mmc4" / "000000.tar") + read_samples(corpus / "mmc4" / "000001.tar")
    buffer = io.BytesIO()
    with wds.TarWriter(buffer) as writer:
        for sample in samples:
            meta = json.loads(sample["json"])
            for entry in meta["image_info"]:
                entry["image_base64"] = base64.b64encode(b"not a jpeg" * 200).decode()
            writer.write({"__key__": sample["__key__"], "json": json.dumps(meta).encode()})
    whole = buffer.getvalue()
    (folder / "000000.tar").write_bytes(whole)
    (folder / "000001.tar").write_bytes(whole[: len(whole) // 2 + 100])
    return folder


def test_skips_are_counted_per_source_and_reason_and_a_broken_source_stops_training(corpus, pretrained, tmp_path):
    """Review 2, item 6: a whole source failing while another reads fine must not pass as "skipped N"."""
    specs = [f"good=1:{corpus / 'mmc4'}", f"bad=1:{_all_bad_source(corpus, tmp_path / 'bad')}"]
    batches, state = _stream(pretrained, specs)
    for _ in range(5):
        _, position = next(batches)
    assert set(position["skips"]["good"].values()) == {0}
    bad = position["skips"]["bad"]
    assert bad["unreadable_media"] > 0 and bad["broken_shard"] > 0, bad
    assert sum(bad.values()) == position["skipped"]
    # With a window shorter than what was drawn, the bad source's skip rate stops the stream.
    strict = DATA.model_copy(update={"skip_window": 10})
    batches, _ = _stream(pretrained, specs, data=strict)
    with pytest.raises(TrainError, match=r"source bad: 10 of its last 10 samples could not be read .*unreadable_media"):
        for _ in range(20):
            next(batches)


def test_errors_that_are_not_bad_samples_stop_the_stream(corpus, pretrained, monkeypatch):
    def broken_decoder(sample, data, rng):
        raise TypeError("a bug in a decoder")

    monkeypatch.setitem(DECODERS, "mmc4", broken_decoder)
    batches, _ = _stream(pretrained, [str(corpus / "mmc4")])
    with pytest.raises(TypeError, match="a bug in a decoder"):
        next(batches)


def test_eval_counts_the_samples_it_drops(corpus, corrupt_folder, pretrained):
    sources = resolve_sources([str(corrupt_folder), str(corpus / "mmc4")], [])
    collator = Collator(pretrained.tokenizer, pretrained.to_pixels, DATA, pretrained.media_token_ids, 64)
    dropped: dict[str, int] = {}
    batches = list(eval_batches(sources, collator, DATA, 0, 1, 2, dropped))  # 8 of the first pass's 10 good
    assert len(batches) == 2
    assert dropped == {f"{corrupt_folder.name}/bad_metadata": 2, f"{corrupt_folder.name}/no_media": 1}


def test_oversized_samples_are_skipped(corpus, pretrained):
    """Native samples here are 12-13 KB, cosmo ones 21 KB: a 16 KB limit keeps only the first."""
    limited = DATA.model_copy(update={"max_sample_mb": 0.016})
    batches, _ = _stream(pretrained, [str(corpus / "native"), str(corpus / "cosmo")], data=limited)
    batch, position = next(batches)
    assert position["skipped"] > 0
    assert position["skips"]["cosmo"]["too_large"] == position["skipped"]
    assert batch["frame_mask"].sum(-1).max() == 1  # keyframes only, no clip of 3 frames


def test_a_stream_restarted_from_its_position_continues_exactly(corpus, pretrained):
    specs = [f"video=1:{corpus / 'cosmo'}", f"web=2:{corpus / 'mmc4'}", f"pages=1:{corpus / 'native'}"]
    batches, _ = _stream(pretrained, specs)
    for _ in range(3):
        _, position = next(batches)
    saved = copy.deepcopy(position)
    expected = [next(batches)[0] for _ in range(3)]
    resumed, _ = _stream(pretrained, specs, state=saved)
    for want in expected:
        got, _ = next(resumed)
        for key in want:
            assert torch.equal(got[key], want[key]), key


def test_uint8_pixels_normalized_on_the_device_equal_open_clips_transform(corpus, pretrained):
    from PIL import Image

    from cosmo_data.models import load_open_clip

    preprocess = load_open_clip("cosmo-tiny-clip", None, "cpu", fp16=False).preprocess
    collator = Collator(pretrained.tokenizer, pretrained.to_pixels, DATA, pretrained.media_token_ids, 64)
    image = Image.open(io.BytesIO(read_samples(corpus / "native" / "000000.tar")[0]["0.jpg"]))
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (pretrained.pixel_mean, pretrained.pixel_std))
    on_device = (collator._pixels(image).float() / 255 - mean) / std
    assert torch.allclose(on_device, preprocess(image), atol=1e-5)
