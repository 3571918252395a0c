"""What a rewrite changes inside the documents it keeps, in the tables and in every layout's sample alike.

A keyframe or clip whose row is no longer "ok" leaves its document: the keyframe's image (image_info and
its similarity-matrix row, native `frames`, the jpg member) and the keyframe's caption sentence, which a
build under the same rules would never have written (clip and picture rules run before captioning; a
scored keyframe, NSFW, takes its clip and caption with it: stages/curation.py); a clip leaves the native
`clips` and the COSMO clip list. When sentences go, the similarity matrix loses their columns, an image
matched to one is matched again to its most similar sentence left, and each COSMO clip's caption is made
again from the sentences left in it as the build makes it (stages/shard_samples.py), a clip left without
one leaving the list.

A document is filtered (all layouts, with its video) when an edit would leave it without an image or a
sentence, or leave its COSMO sample without a clip: every document is in every layout or in none, as in
the build.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from cosmo_data.models.gpt2_tokens import fit_tokens
from cosmo_data.schemas.corpus_layout import COSMO_CAPTION_TOKENS
from cosmo_data.schemas.records import FILTERED, OK, Clip, Sentence
from cosmo_data.stages.shard_samples import clip_sentences

# webdataset's key of a tar member: the path up to the first dot of its file name.
_MEMBER_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
# The build's reason for a document one layout cannot hold (stages/shard_samples.py).
EMPTY_SAMPLE = "output_empty_sample"


@dataclass
class SampleEdit:
    """What leaves one kept document: keyframes (frame_idx), clips (clip_idx) and sentences (their index
    in the document as built); with sentences gone, each image's new match (frame_idx: matched text
    index, similarity) and each COSMO clip's new caption (clip_idx: text, "" when none is left)."""

    frames: set[int]
    clips: set[int]
    sentences: set[int] = field(default_factory=set)
    matched: dict[int, tuple[int, float]] = field(default_factory=dict)
    captions: dict[int, str] = field(default_factory=dict)
    removed_words: int = 0
    # The caller's own edit of the sample's json (any layout), made after these (rewrite_groups' GroupChange).
    then: Callable[[dict], dict] | None = None

    def apply(self, sample: dict) -> dict:
        """Any layout's json with the edit made (native, mmc4, cosmo)."""
        if "image_info" in sample:
            keep = [k for k, info in enumerate(sample["image_info"]) if info.get("frame_idx") not in self.frames]
            sample["image_info"] = [sample["image_info"][k] for k in keep]
            if "similarity_matrix" in sample:
                sample["similarity_matrix"] = [self._row(sample["similarity_matrix"][k]) for k in keep]
            if self.sentences:
                for info in sample["image_info"]:
                    info["matched_text_index"], info["matched_sim"] = self.matched[info["frame_idx"]]
        if "text_list" in sample:
            sample["text_list"] = self._row(sample["text_list"])
        if isinstance(sample.get("sentences"), list):
            sample["sentences"] = self._row(sample["sentences"])
        if "n_tokens" in sample:
            sample["n_tokens"] -= self.removed_words
        if isinstance(sample.get("frames"), list):
            sample["frames"] = [f for f in sample["frames"] if f.get("frame_idx") not in self.frames]
        if isinstance(sample.get("clips"), list):
            sample["clips"] = [c for c in sample["clips"] if c.get("clip_idx") not in self.clips]
        if isinstance(sample.get("clips"), str) and "source_clips" in sample:
            pairs = []
            for entry, source in zip(json.loads(sample["clips"]), sample["source_clips"]):
                if source["clip_idx"] in self.clips:
                    continue
                if self.sentences:
                    entry = {**entry, "caption": self.captions.get(source["clip_idx"], "")}
                if entry["caption"]:
                    pairs.append((entry, source))
            sample["clips"] = json.dumps([entry for entry, _ in pairs], ensure_ascii=False)
            sample["source_clips"] = [source for _, source in pairs]
        return self.then(sample) if self.then else sample

    def _row(self, values: list) -> list:
        return [value for k, value in enumerate(values) if k not in self.sentences] if self.sentences else values


def kept_documents(tables: dict[str, pa.Table]) -> set[str]:
    """doc_ids whose samples belong in the shards: the document and its video both "ok" (a null status
    is a corpus written before curation: ok)."""
    ok_videos = {row["video_id"] for row in tables["videos"].select(["video_id", "status"]).to_pylist() if _ok(row)}
    return {
        row["doc_id"]
        for row in tables["documents"].select(["doc_id", "video_id", "status"]).to_pylist()
        if row["video_id"] in ok_videos and _ok(row)
    }


def _ok(row: dict) -> bool:
    return row.get("status") in (None, OK)


def edit_documents(tables: dict[str, pa.Table]) -> tuple[dict[str, pa.Table], dict[str, SampleEdit]]:
    """The tables with the keyframes, clips and caption sentences that are no longer ok taken out of the
    kept documents (filtering those left without an image or a sentence, under the rule that took most of
    them), and the edit each kept document's samples need."""
    gone_frames: dict[str, dict[int, dict]] = {}
    for row in (
        tables["frames"].select(["video_id", "frame_idx", "t_s", "caption", "status", "filter_reason"]).to_pylist()
    ):
        if not _ok(row):
            gone_frames.setdefault(row["video_id"], {})[row["frame_idx"]] = row
    gone_clips: dict[str, set[int]] = {}
    ok_clips: dict[str, list[Clip]] = {}
    for row in tables["clips"].select(["video_id", "clip_idx", "start_s", "end_s", "status"]).to_pylist():
        if _ok(row):
            ok_clips.setdefault(row["video_id"], []).append(Clip(row["clip_idx"], row["start_s"], row["end_s"]))
        else:
            gone_clips.setdefault(row["video_id"], set()).add(row["clip_idx"])
    kept = kept_documents(tables)
    edits: dict[str, SampleEdit] = {}
    filtered: dict[str, tuple[str, str]] = {}
    documents = tables["documents"].to_pylist()
    for document in documents:
        frames = gone_frames.get(document["video_id"], {})
        clips = gone_clips.get(document["video_id"], set())
        if document["doc_id"] not in kept or not (frames or clips):
            continue
        edit = SampleEdit(set(frames), clips)
        held = {info["frame_idx"] for info in document["image_info"]}
        if held and held <= edit.frames:
            rule = Counter(frames[k]["filter_reason"] or frames[k]["status"] for k in held).most_common(1)[0][0]
            filtered[document["doc_id"]] = (rule, f"every image of its document failed a rule ({rule})")
            continue
        edit.sentences = _caption_sentences(document, frames.values())
        if edit.sentences and len(edit.sentences) == len(document["text_list"]):
            rule = Counter(f["filter_reason"] or f["status"] for f in frames.values()).most_common(1)[0][0]
            filtered[document["doc_id"]] = (rule, f"every sentence of its document went with a keyframe ({rule})")
            continue
        _edit_row(document, edit, ok_clips.get(document["video_id"], []))
        edits[document["doc_id"]] = edit
    tables = dict(tables)
    tables["documents"] = pa.Table.from_pylist(documents, schema=tables["documents"].schema)
    return filter_documents(tables, filtered), edits


def _caption_sentences(document: dict, frames) -> set[int]:
    """Indices of the caption sentences of these keyframes: the caption's text over the keyframe's time
    (DocumentStage makes it start = end = t_s)."""
    captions = [(f["t_s"], f["caption"].strip()) for f in frames if f["caption"] and f["caption"].strip()]
    return {
        k
        for k, (text, start, end, source) in enumerate(
            zip(
                document["text_list"],
                document["sentence_start_s"],
                document["sentence_end_s"],
                document["sentence_source"],
            )
        )
        if source == "caption" and any(text == caption and start <= t_s <= end for t_s, caption in captions)
    }


def _edit_row(document: dict, edit: SampleEdit, clips: list[Clip]) -> None:
    """The edit made on the document's table row; with sentences gone, the edit's new matches and captions."""
    keep = [k for k, info in enumerate(document["image_info"]) if info["frame_idx"] not in edit.frames]
    document["image_info"] = [document["image_info"][k] for k in keep]
    document["similarity_matrix"] = [edit._row(document["similarity_matrix"][k]) for k in keep]
    if not edit.sentences:
        return
    old_index = [k for k in range(len(document["text_list"])) if k not in edit.sentences]
    new_index = {old: new for new, old in enumerate(old_index)}
    edit.removed_words = sum(len(document["text_list"][k].split()) for k in edit.sentences)
    for info, row in zip(document["image_info"], document["similarity_matrix"]):
        if info["matched_text_index"] not in new_index:  # its sentence went: its most similar one left
            best = int(np.argmax(row))
            info["matched_text_index"], info["matched_sim"] = best, float(row[best])
        else:
            info["matched_text_index"] = new_index[info["matched_text_index"]]
        edit.matched[info["frame_idx"]] = (info["matched_text_index"], info["matched_sim"])
    for name in ("text_list", "sentence_start_s", "sentence_end_s", "sentence_source"):
        document[name] = edit._row(document[name])
    document["n_tokens"] -= edit.removed_words
    sentences = [
        Sentence(text, start, end, source)
        for text, start, end, source in zip(
            document["text_list"], document["sentence_start_s"], document["sentence_end_s"], document["sentence_source"]
        )
    ]
    clips = sorted((c for c in clips if c.clip_idx not in edit.clips), key=lambda c: c.start_s)
    edit.captions = {
        clip.clip_idx: fit_tokens(texts, COSMO_CAPTION_TOKENS)
        for clip, texts in zip(clips, clip_sentences(sentences, clips))
    }


def filter_documents(tables: dict[str, pa.Table], reasons: dict[str, tuple[str, str]]) -> dict[str, pa.Table]:
    """These documents filtered (doc_id: rule, message), with their videos where those are still ok."""
    if not reasons:
        return tables
    documents = tables["documents"].to_pylist()
    by_video = {}
    for document in documents:
        if document["doc_id"] in reasons:
            document["status"], document["filter_reason"] = FILTERED, reasons[document["doc_id"]][0]
            by_video[document["video_id"]] = reasons[document["doc_id"]]
    videos = tables["videos"].to_pylist()
    for video in videos:
        if video["video_id"] in by_video and _ok(video):
            video["status"], video["filter_reason"] = FILTERED, by_video[video["video_id"]][0]
            video["error"] = by_video[video["video_id"]][1]
    tables = dict(tables)
    tables["documents"] = pa.Table.from_pylist(documents, schema=tables["documents"].schema)
    tables["videos"] = pa.Table.from_pylist(videos, schema=tables["videos"].schema)
    return tables


def emptied_cosmo_samples(data: bytes, edits: dict[str, SampleEdit]) -> set[str]:
    """Keys of the COSMO tar's samples that their edit would leave without a clip."""
    emptied = set()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            match = _MEMBER_KEY.match(member.name)
            if match and match.group(2) == "json" and match.group(1) in edits:
                sample = json.loads(tar.extractfile(member).read())
                if not edits[match.group(1)].apply(sample).get("source_clips"):
                    emptied.add(match.group(1))
    return emptied


def filter_tar(data: bytes, kept: set[str], edits: dict[str, SampleEdit]) -> tuple[bytes, int, int]:
    """The tar with only the samples whose key is in kept, edited as their edit says (json rewritten,
    keyframes' jpgs left out); other members copied byte for byte. Returns it, samples kept, removed."""
    pieces: list[bytes] = []
    kept_keys: set[str] = set()
    removed_keys: set[str] = set()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            match = _MEMBER_KEY.match(member.name)
            key, ext = (match.group(1), match.group(2)) if match else (member.name, "")
            if key not in kept:
                removed_keys.add(key)
                continue
            kept_keys.add(key)
            end = member.offset_data + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            edit = edits.get(key)
            if edit is None:
                pieces.append(data[member.offset : end])
            elif ext == "json":
                sample = json.loads(data[member.offset_data : member.offset_data + member.size])
                pieces.append(_member(member.name, _sample_json(edit.apply(sample))))
            elif not (
                ext.endswith(".jpg") and ext.partition(".")[0].isdigit() and int(ext.partition(".")[0]) in edit.frames
            ):
                pieces.append(data[member.offset : end])
    body = b"".join(pieces) + bytes(2 * tarfile.BLOCKSIZE)
    return body + bytes(-len(body) % tarfile.RECORDSIZE), len(kept_keys), len(removed_keys)


def _sample_json(value: object) -> bytes:
    # As stages/shard_samples.py writes a sample's json.
    return json.dumps(value, ensure_ascii=False, sort_keys=True).encode("utf-8")


def _member(name: str, data: bytes) -> bytes:
    """One tar member with the fixed metadata the build gives every member (stages/shard_samples.py)."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o444
    header = info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    return header + data + bytes(-len(data) % tarfile.BLOCKSIZE)
