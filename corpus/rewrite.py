"""Rewrite a built corpus from updated tables: every table part and every shard, switched in at once.

`cosmo-data filter` (and dedup) decide again which videos, clips, frames and documents stay, from what
the tables hold, and hand the whole tables here. A video's samples leave every layout's shards when its
`videos.status` is no longer "ok" or its document's `status` is no longer "ok"; the samples that stay are
copied byte for byte (their tar members are cut out of the old tar as they are). Group markers'
counts, `sizes.json` / `num_samples.json` and build.json's totals follow.

Old files stay intact until the new set is complete: everything is first written under
`_state/rewrite/` with the same relative paths, then `_state/rewrite/complete.json` lists them, and only
then is each moved over its old file (a rename on a disk; an upload then a delete on object storage).
A rewrite killed before the list exists leaves the old corpus untouched (its staging is removed on the
next rewrite); one killed while moving is finished by the next rewrite or filter before it does
anything else (`finish_pending_rewrite`), so the switch always runs to its end.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cosmo_data.schemas.corpus_layout import SIZES_FILES, STATE_DIR
from cosmo_data.schemas.records import OK
from cosmo_data.schemas.tables import TABLES
from cosmo_data.storage import AnyPath, RemotePath, location, write_atomic

STAGING = "rewrite"
COMPLETE = "complete.json"
# webdataset's key of a tar member: the path up to the first dot of its file name.
_MEMBER_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


class RewriteError(Exception):
    """The corpus cannot be rewritten (not a finished build, or tables that do not fit it)."""


@dataclass
class RewriteSummary:
    groups: int
    videos_ok: int
    # Per layout: samples in the shards after the rewrite, and how many it took out.
    samples: dict[str, int] = field(default_factory=dict)
    samples_removed: dict[str, int] = field(default_factory=dict)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """The table with exactly the schema's columns, in its order and types; missing ones as nulls (a
    corpus built before a column existed)."""
    columns = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def read_tables(corpus: AnyPath | str) -> dict[str, pa.Table]:
    """Every table of the corpus, whole, conformed to the current schemas."""
    corpus = location(corpus)
    tables = {}
    for name, schema in TABLES.items():
        parts = [
            pq.read_table(io.BytesIO(path.read_bytes())) for path in sorted((corpus / name).glob("part-*.parquet"))
        ]
        tables[name] = pa.concat_tables([conform(part, schema) for part in parts]) if parts else schema.empty_table()
    return tables


def kept_documents(tables: dict[str, pa.Table]) -> set[str]:
    """doc_ids whose samples belong in the shards: the document and its video both "ok" (a null status
    is a corpus written before curation: ok)."""
    videos = tables["videos"]
    ok_videos = set(videos.filter(pc.equal(videos["status"], OK))["video_id"].to_pylist())
    documents = tables["documents"]
    statuses = documents["status"].to_pylist() if "status" in documents.column_names else [None] * len(documents)
    return {
        doc_id
        for doc_id, video_id, status in zip(
            documents["doc_id"].to_pylist(), documents["video_id"].to_pylist(), statuses
        )
        if video_id in ok_videos and status in (None, OK)
    }


def rewrite_corpus(
    corpus: AnyPath | str,
    tables: dict[str, pa.Table],
    json_edits: Mapping[str, Callable[[dict], dict]] | None = None,
) -> RewriteSummary:
    """Rewrite every table part and shard of a finished build from these whole tables (see the module).
    json_edits: per doc_id, a function that rewrites that sample's json in every layout (`cosmo-data
    narrate` gives its documents new sentences), applied after the edits the tables call for."""
    corpus = location(corpus)
    finish_pending_rewrite(corpus)
    markers = _read_markers(corpus)
    if not markers:
        raise RewriteError(f"{corpus} has no finished group (_state/groups/*.json): not a finished build")
    per_group = _videos_per_group(corpus)
    missing = sorted(set(TABLES) - set(tables))
    if missing:
        raise RewriteError(f"tables missing for the rewrite: {', '.join(missing)}")
    tables = {name: conform(tables[name], schema) for name, schema in TABLES.items()}
    tables["documents"] = _documents_follow_videos(tables["documents"], tables["videos"])
    tables, edits = _without_filtered_images(tables)
    videos = tables["videos"]
    group_of = {
        video_id: index // per_group
        for video_id, index in zip(videos["video_id"].to_pylist(), videos["source_index"].to_pylist())
    }
    kept = kept_documents(tables)
    formats = (
        sorted(p.name for p in (corpus / "shards").iterdir() if p.is_dir()) if (corpus / "shards").is_dir() else []
    )

    staging = corpus / STATE_DIR / STAGING
    _remove_tree(staging)
    staged: list[str] = []

    def stage(relative: str, data: bytes) -> None:
        write_atomic(staging / relative, data)
        staged.append(relative)

    summary = RewriteSummary(groups=len(markers), videos_ok=0)
    for group, marker in sorted(markers.items()):
        name = f"{group:06d}"
        members = {video_id for video_id, g in group_of.items() if g == group}
        for table_name, table in tables.items():
            part = table.filter(pc.is_in(table["video_id"], pa.array(sorted(members), pa.string())))
            sink = io.BytesIO()
            pq.write_table(part, sink)
            stage(f"{table_name}/part-{name}.parquet", sink.getvalue())
        group_videos = videos.filter(pc.is_in(videos["video_id"], pa.array(sorted(members), pa.string())))
        statuses = Counter(group_videos["status"].to_pylist())
        marker["ok"] = statuses.pop(OK, 0)
        marker["failures"] = dict(sorted(statuses.items()))
        summary.videos_ok += marker["ok"]
        for fmt in formats:
            tar_path = corpus / "shards" / fmt / f"{name}.tar"
            if not tar_path.exists():
                continue
            data, n_kept, n_removed = _filter_tar(tar_path.read_bytes(), kept, edits, json_edits or {})
            stage(f"shards/{fmt}/{name}.tar", data)
            marker.setdefault("samples", {})[fmt] = n_kept
            summary.samples[fmt] = summary.samples.get(fmt, 0) + n_kept
            summary.samples_removed[fmt] = summary.samples_removed.get(fmt, 0) + n_removed
        stage(f"{STATE_DIR}/groups/{name}.json", _json(marker))
    for fmt in formats:
        sizes = {f"{g:06d}.tar": markers[g].get("samples", {}).get(fmt, 0) for g in sorted(markers)}
        for sizes_name in SIZES_FILES:
            stage(f"shards/{fmt}/{sizes_name}", _json(sizes))
    build_json = corpus / "build.json"
    if build_json.exists():
        build = json.loads(build_json.read_text())
        build["ok"] = sum(m["ok"] for m in markers.values())
        failures: Counter[str] = Counter()
        for marker in markers.values():
            failures.update(marker["failures"])
        build["failures"] = dict(sorted(failures.items()))
        stage("build.json", _json(build))
    # Everything is written: from here on the rewrite is finished, by this call or the next one.
    write_atomic(staging / COMPLETE, _json(staged))
    finish_pending_rewrite(corpus)
    return summary


def _documents_follow_videos(documents: pa.Table, videos: pa.Table) -> pa.Table:
    """A document whose video is no longer ok takes the video's status and filter_reason (null: ok)."""
    video_rows = {
        video_id: (status, reason)
        for video_id, status, reason in zip(
            videos["video_id"].to_pylist(), videos["status"].to_pylist(), videos["filter_reason"].to_pylist()
        )
    }
    statuses, reasons = [], []
    for video_id, status, reason in zip(
        documents["video_id"].to_pylist(), documents["status"].to_pylist(), documents["filter_reason"].to_pylist()
    ):
        video_status, video_reason = video_rows.get(video_id, (None, None))
        if status in (None, OK) and video_status not in (None, OK):
            status, reason = video_status, video_reason
        statuses.append(status or OK)
        reasons.append(reason)
    documents = documents.set_column(
        documents.schema.get_field_index("status"), "status", pa.array(statuses, pa.string())
    )
    return documents.set_column(
        documents.schema.get_field_index("filter_reason"), "filter_reason", pa.array(reasons, pa.string())
    )


def finish_pending_rewrite(corpus: AnyPath | str) -> bool:
    """Move a complete staged rewrite into place (True), or drop an incomplete one (False)."""
    corpus = location(corpus)
    staging = corpus / STATE_DIR / STAGING
    if not staging.exists():
        return False
    complete = staging / COMPLETE
    if not complete.exists():
        _remove_tree(staging)
        return False
    for relative in json.loads(complete.read_text()):
        source = staging / relative
        if source.exists():  # moved already by a rewrite killed halfway through
            _move(source, corpus / relative)
    complete.unlink()
    _remove_tree(staging)
    return True


def _filter_tar(
    data: bytes, kept: set[str], edits: dict[str, SampleEdit], json_edits: Mapping[str, Callable[[dict], dict]]
) -> tuple[bytes, int, int]:
    """The tar with only the samples whose key is in kept, less the keyframes and clips that edits take
    out of them, their json rewritten by json_edits; other members copied byte for byte."""
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
            edit, json_edit = edits.get(key), json_edits.get(key)
            if edit is None and (json_edit is None or ext != "json"):
                pieces.append(data[member.offset : end])
            elif ext == "json":
                sample = json.loads(data[member.offset_data : member.offset_data + member.size])
                sample = edit.apply(sample) if edit else sample
                pieces.append(_member(member.name, _sample_json(json_edit(sample) if json_edit else sample)))
            elif not (
                ext.endswith(".jpg") and ext.partition(".")[0].isdigit() and int(ext.partition(".")[0]) in edit.frames
            ):
                pieces.append(data[member.offset : end])
    body = b"".join(pieces) + bytes(2 * tarfile.BLOCKSIZE)
    return body + bytes(-len(body) % tarfile.RECORDSIZE), len(kept_keys), len(removed_keys)


@dataclass
class SampleEdit:
    """Keyframes (frame_idx) and clips (clip_idx) of a kept document that its tables no longer hold ok."""

    frames: set[int]
    clips: set[int]

    def apply(self, sample: dict) -> dict:
        """Any layout's json without them: native frames/clips/image_info, mmc4 image_info, the matrix's
        rows with their images, COSMO's clip strings with their source_clips."""
        if "image_info" in sample:
            keep = [k for k, info in enumerate(sample["image_info"]) if info.get("frame_idx") not in self.frames]
            sample["image_info"] = [sample["image_info"][k] for k in keep]
            if "similarity_matrix" in sample:
                sample["similarity_matrix"] = [sample["similarity_matrix"][k] for k in keep]
        if isinstance(sample.get("frames"), list):
            sample["frames"] = [f for f in sample["frames"] if f.get("frame_idx") not in self.frames]
        if isinstance(sample.get("clips"), list):
            sample["clips"] = [c for c in sample["clips"] if c.get("clip_idx") not in self.clips]
        if isinstance(sample.get("clips"), str) and "source_clips" in sample:
            pairs = [
                (entry, source)
                for entry, source in zip(json.loads(sample["clips"]), sample["source_clips"])
                if source["clip_idx"] not in self.clips
            ]
            sample["clips"] = json.dumps([entry for entry, _ in pairs], ensure_ascii=False)
            sample["source_clips"] = [source for _, source in pairs]
        return sample


def _without_filtered_images(tables: dict[str, pa.Table]) -> tuple[dict[str, pa.Table], dict[str, SampleEdit]]:
    """Take keyframes and clips whose rows are no longer ok out of the kept documents (image_info and the
    similarity matrix's rows); a document left without an image is filtered, with its video, under the
    rule that took most of them. Returns the edits the samples need."""
    gone_frames: dict[str, dict[int, str]] = {}
    for row in tables["frames"].select(["video_id", "frame_idx", "status", "filter_reason"]).to_pylist():
        if row["status"] not in (None, OK):
            gone_frames.setdefault(row["video_id"], {})[row["frame_idx"]] = row["filter_reason"] or row["status"]
    gone_clips: dict[str, set[int]] = {}
    for row in tables["clips"].select(["video_id", "clip_idx", "status"]).to_pylist():
        if row["status"] not in (None, OK):
            gone_clips.setdefault(row["video_id"], set()).add(row["clip_idx"])
    kept = kept_documents(tables)
    edits: dict[str, SampleEdit] = {}
    emptied: dict[str, str] = {}
    documents = tables["documents"].to_pylist()
    for document in documents:
        frames = gone_frames.get(document["video_id"], {})
        if document["doc_id"] not in kept or not (frames or gone_clips.get(document["video_id"])):
            continue
        edit = SampleEdit(set(frames), gone_clips.get(document["video_id"], set()))
        held = {info["frame_idx"] for info in document["image_info"]}
        edits[document["doc_id"]] = edit
        if held and held <= edit.frames:
            rule = Counter(frames[k] for k in held).most_common(1)[0][0]
            document["status"], document["filter_reason"] = "filtered", rule
            emptied[document["video_id"]] = rule
            continue
        keep = [k for k, info in enumerate(document["image_info"]) if info["frame_idx"] not in edit.frames]
        document["image_info"] = [document["image_info"][k] for k in keep]
        document["similarity_matrix"] = [document["similarity_matrix"][k] for k in keep]
    tables = dict(tables)
    tables["documents"] = pa.Table.from_pylist(documents, schema=tables["documents"].schema)
    if emptied:
        videos = tables["videos"].to_pylist()
        for video in videos:
            if video["video_id"] in emptied and video["status"] == OK:
                video["status"], video["filter_reason"] = "filtered", emptied[video["video_id"]]
                video["error"] = f"every image of its document failed a rule ({emptied[video['video_id']]})"
        tables["videos"] = pa.Table.from_pylist(videos, schema=tables["videos"].schema)
    return tables, edits


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


def _read_markers(corpus: AnyPath) -> dict[int, dict]:
    groups = corpus / STATE_DIR / "groups"
    markers = {}
    if groups.is_dir():
        for path in groups.glob("*.json"):
            if path.stem.isdigit():
                markers[int(path.stem)] = json.loads(path.read_text())
    return markers


def _videos_per_group(corpus: AnyPath) -> int:
    run = corpus / STATE_DIR / "run.json"
    if not run.exists():
        raise RewriteError(f"{corpus} has no {STATE_DIR}/run.json: not the output of a build")
    return int(json.loads(run.read_text())["config"]["output"]["videos_per_shard"])


def _json(value: object) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True).encode("utf-8")


def _move(source: AnyPath, target: AnyPath) -> None:
    if isinstance(source, RemotePath):
        write_atomic(target, source.read_bytes())
        source.unlink()
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)


def _remove_tree(folder: AnyPath) -> None:
    if isinstance(folder, RemotePath):
        # The whole prefix, with the empty directory markers pyarrow writes on object storage.
        if folder.is_dir():
            folder.fs.delete_dir(folder.path)
    elif folder.exists():
        shutil.rmtree(folder)
