"""`cosmo-data narrate CORPUS [--config FILE]`: narrate a built corpus again without decoding a video.

Prompt and model iteration is what users of the narration step do most, so this reruns only that step:
each ok document's evidence comes from the tables (keyframe captions from `frames`, speech from
`transcripts`, cut into sentences as the build cuts them), never from a previous narration; the
narrator (stages/narrate.py, the same windows and checks as the build) rewrites its clips' sentences;
the new sentences are scored against the keyframe embeddings the build stored (`embeddings`) with CLIP's
text tower only, and assigned to the document's images again by the build's method. The document keeps
its images (their curation stands). Tables and shards are then rewritten as `cosmo-data filter` does
(corpus/rewrite.py: atomic, the old corpus intact until the new one is whole); the samples' json follows
in every layout, the images and the cosmo mp4 are copied byte for byte.

The CLIP model is always the build's own (run.json): the stored embeddings are in its space.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from cosmo_data.corpus.rewrite import RewriteSummary, finish_pending_rewrite, read_tables, rewrite_corpus
from cosmo_data.models import load_open_clip, no_grad
from cosmo_data.models.gpt2_tokens import fit_tokens
from cosmo_data.models.llm import load_generator
from cosmo_data.schemas.config import BuildConfig
from cosmo_data.schemas.corpus_layout import COSMO_CAPTION_TOKENS, STATE_DIR
from cosmo_data.schemas.records import OK, Clip, Frame, Segment, Sentence, VideoRecord
from cosmo_data.stages.assign import assign
from cosmo_data.stages.clip_score import SIMILARITY_DECIMALS
from cosmo_data.stages.document import build_sentences
from cosmo_data.stages.narrate import ClipOutcome, Narrator, Prompt, clip_evidence, narrated_sentences, sentence_clips
from cosmo_data.storage import AnyPath, location


class NarrateError(Exception):
    """The corpus cannot be narrated (not a finished build)."""


@dataclass
class NarrateSummary:
    documents: int = 0
    statuses: Counter[str] = field(default_factory=Counter)  # clips per narration status
    output_tokens: int = 0
    rewrite: RewriteSummary | None = None


@dataclass
class _Video:
    record: VideoRecord  # clips, keyframe captions (no pictures) and transcript, from the tables
    document: dict  # its documents row
    sentences: list[Sentence] = field(default_factory=list)
    outcomes: list[ClipOutcome] = field(default_factory=list)


def build_config_of(corpus: AnyPath) -> BuildConfig:
    run = corpus / STATE_DIR / "run.json"
    if not run.exists():
        raise NarrateError(f"{corpus} has no {STATE_DIR}/run.json: not the output of a build")
    return BuildConfig.model_validate(json.loads(run.read_text())["config"])


def video_records(tables: dict[str, pa.Table]) -> list[_Video]:
    """The ok documents of ok videos, each with what its narration reads, rebuilt from the tables."""

    def rows_by_video(name: str) -> dict[str, list[dict]]:
        grouped: dict[str, list[dict]] = {}
        for row in tables[name].to_pylist():
            grouped.setdefault(row["video_id"], []).append(row)
        return grouped

    videos = {v["video_id"]: v for v in tables["videos"].to_pylist() if v["status"] == OK}
    clips, frames, segments = rows_by_video("clips"), rows_by_video("frames"), rows_by_video("transcripts")
    found = []
    for document in tables["documents"].to_pylist():
        video = videos.get(document["video_id"])
        if video is None or document["status"] not in (None, OK):
            continue
        record = VideoRecord(video["video_id"], video["source"], video["source_index"])
        record.clips = [
            Clip(c["clip_idx"], c["start_s"], c["end_s"], c["boundary"])
            for c in sorted(clips.get(record.video_id, []), key=lambda c: c["clip_idx"])
            if c["status"] in (None, OK)
        ]
        record.frames = [
            Frame(f["clip_idx"], f["frame_idx"], f["t_s"], f["width"], f["height"], b"", f["caption"])
            for f in sorted(frames.get(record.video_id, []), key=lambda f: f["frame_idx"])
            if f["status"] in (None, OK)
        ]
        record.transcript = [
            Segment(s["seg_idx"], s["start_s"], s["end_s"], s["text"], s["avg_logprob"], s["no_speech_prob"])
            for s in sorted(segments.get(record.video_id, []), key=lambda s: s["seg_idx"])
        ]
        found.append(_Video(record, document))
    return found


class TextScorer:
    """CLIP's text tower against stored image embeddings: no image is decoded, the image tower never runs."""

    def __init__(self, config: BuildConfig):
        self.clip = load_open_clip(config.clip_score.model, config.clip_score.pretrained, "cpu", fp16=False)
        self.per_forward = config.clip_score.sentences_per_forward

    @no_grad
    def embed(self, texts: list[str]) -> np.ndarray:
        import torch

        chunks = [
            self.clip.model.encode_text(self.clip.tokenizer(texts[start : start + self.per_forward])).float()
            for start in range(0, len(texts), self.per_forward)
        ]
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1).numpy()


def narrate_corpus(corpus: AnyPath | str, config: BuildConfig | None = None) -> NarrateSummary:
    """Narrate every ok document of a built corpus again and rewrite it (see the module)."""
    corpus = location(corpus)
    finish_pending_rewrite(corpus)
    built = build_config_of(corpus)
    config = (config or built).model_copy(update={"clip_score": built.clip_score})
    tables = read_tables(corpus)
    videos = video_records(tables)
    summary = NarrateSummary(documents=len(videos))
    if not videos:
        summary.rewrite = rewrite_corpus(corpus, tables)
        return summary

    narration = config.narration
    narrator = Narrator(load_generator(narration, "cpu"), narration, Prompt.read(narration.prompt))
    per_call = narration.resources.batch_size
    for start in range(0, len(videos), per_call):
        chunk = videos[start : start + per_call]
        originals = [build_sentences(v.record) for v in chunk]
        evidence = [clip_evidence(v.record.clips, sentences) for v, sentences in zip(chunk, originals)]
        for video, sentences, outcomes in zip(chunk, originals, narrator.narrate(evidence)):
            video.outcomes = outcomes
            video.sentences = narrated_sentences(sentences, video.record.clips, outcomes)
            summary.statuses.update(o.status for o in outcomes)
    summary.output_tokens = narrator.output_tokens

    embeddings = {
        (row["video_id"], row["frame_idx"]): np.frombuffer(row["embedding"], dtype="<f2").astype(np.float32)
        for row in tables["embeddings"].to_pylist()
    }
    scorer = TextScorer(config)
    json_edits = {}
    for video in videos:
        _score_and_assign(video, scorer, embeddings, config)
        json_edits[video.document["doc_id"]] = _sample_editor(video)
    tables["documents"] = _documents_table(tables["documents"], videos)
    tables["clips"] = _clips_table(tables["clips"], videos)
    summary.rewrite = rewrite_corpus(corpus, tables, {"command": "narrate"}, json_edits)
    return summary


def _score_and_assign(video: _Video, scorer: TextScorer, embeddings: dict, config: BuildConfig) -> None:
    """The document row's sentences, similarity matrix and image assignment for the new sentences."""
    document, video_id = video.document, video.record.video_id
    texts = [s.text for s in video.sentences]
    images = [info for info in document["image_info"] if (video_id, info["frame_idx"]) in embeddings]
    image_matrix = np.stack([embeddings[(video_id, info["frame_idx"])] for info in images]) if images else None
    if image_matrix is None or not texts:
        sim = np.zeros((len(images), len(texts)))
    else:
        sim = np.clip(image_matrix @ scorer.embed(texts).T, -1.0, 1.0).round(SIMILARITY_DECIMALS)
    spans = [(s.start_s, s.end_s) for s in video.sentences]
    indices, matched = assign(config.assign, sim, [info["t_s"] for info in images], spans) if images else ([], [])
    document.update(
        text_list=texts,
        sentence_start_s=[s.start_s for s in video.sentences],
        sentence_end_s=[s.end_s for s in video.sentences],
        sentence_source=[s.source for s in video.sentences],
        image_info=[
            {**info, "matched_text_index": int(k), "matched_sim": float(m)}
            for info, k, m in zip(images, indices, matched)
        ],
        similarity_matrix=sim.tolist(),
        n_tokens=sum(len(t.split()) for t in texts),
        assignment=config.assign.method,
    )


def _sample_editor(video: _Video):
    """The function that gives one sample's json, in any layout, the document's new text and assignment."""
    document = video.document
    by_frame = {info["frame_idx"]: info for info in document["image_info"]}
    clip_texts: dict[int, list[str]] = {}
    for sentence, k in zip(video.sentences, sentence_clips(video.sentences, video.record.clips)):
        if k is not None:
            clip_texts.setdefault(video.record.clips[k].clip_idx, []).append(sentence.text)

    def edit(sample: dict) -> dict:
        if "video_speed" in sample:  # cosmo: each listed clip's caption from its new sentences
            entries = json.loads(sample["clips"])
            for entry, source in zip(entries, sample["source_clips"]):
                caption = fit_tokens(clip_texts.get(source["clip_idx"], []), COSMO_CAPTION_TOKENS)
                entry["caption"] = caption or entry["caption"]
            sample["clips"] = json.dumps(entries, ensure_ascii=False)
            return sample
        sample["text_list"] = document["text_list"]
        sample["similarity_matrix"] = document["similarity_matrix"]
        sample["image_info"] = [
            {**info, **{key: by_frame[info["frame_idx"]][key] for key in ("matched_text_index", "matched_sim")}}
            for info in sample["image_info"]
            if info["frame_idx"] in by_frame
        ]
        if "sentences" in sample:  # native
            sample["sentences"] = [
                {"text": t, "start_s": a, "end_s": b, "source": s}
                for t, a, b, s in zip(
                    document["text_list"],
                    document["sentence_start_s"],
                    document["sentence_end_s"],
                    document["sentence_source"],
                )
            ]
            sample["n_tokens"] = document["n_tokens"]
        sample["assignment"] = document["assignment"]
        return sample

    return edit


def _documents_table(table: pa.Table, videos: list[_Video]) -> pa.Table:
    new = {v.document["doc_id"]: v.document for v in videos}
    rows = [new.get(row["doc_id"], row) for row in table.to_pylist()]
    return pa.Table.from_pylist(rows, schema=table.schema)


def _clips_table(table: pa.Table, videos: list[_Video]) -> pa.Table:
    outcomes = {(v.record.video_id, o.clip_idx): o for v in videos for o in v.outcomes}
    rows = table.to_pylist()
    for row in rows:
        outcome = outcomes.get((row["video_id"], row["clip_idx"]))
        if outcome is not None:
            row["narration_status"], row["narration"] = outcome.status, outcome.narration
    return pa.Table.from_pylist(rows, schema=table.schema)
