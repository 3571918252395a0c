"""Writing finished records: Parquet tables and webdataset shards, one output group at a time.

A group is a fixed slice of the source list (source_index // videos_per_shard), so shard membership
depends only on the sources, never on which worker finished first. A group is written whole:
every file goes to a temporary name and is renamed into place, then the group's done marker is written,
then the manifests (sizes.json, and num_samples.json for COSMO's loader) are rewritten from the groups'
counts, which the writer reads from the markers once (recover) and keeps in memory. A killed run therefore
leaves either a complete group or files that recover() removes; a rerun redoes exactly the groups without a
marker. reopen() takes groups back (marker first, then files), so a rerun writes them again whole.

Shard bytes never pass through here: the last stage stages each video's samples as one object under
_state/parts/<group>/ on the worker that made them (stages/shard_samples.py), the record brings back only
where, and a finished group's tars are concatenated from those parts by write_shards, which the build runs
as a Ray task on some node. The marker waits for that task; the parts go after the marker.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from cosmo_data.schemas import tables as schemas
from cosmo_data.schemas.corpus_layout import SIZES_FILES
from cosmo_data.schemas.records import FILTERED, OK, ShardPart, VideoRecord
from cosmo_data.schemas.redact import redact
from cosmo_data.stages.captions import WHISPER
from cosmo_data.stages.platform_info import COLUMNS as PLATFORM_COLUMNS
from cosmo_data.storage import AnyPath, StorageError, is_remote, location, open_atomic, remove_tree, write_atomic

STATE_DIR = "_state"
TMP_PREFIX = ".tmp-"
# Under STATE_DIR: each group's staged samples, one object per video, until its tars are made and marked.
PARTS_DIR = "parts"
# Groups whose tars are being made at once; past this the driver waits for the oldest. Each keeps its
# staged parts until it is marked, so this bounds the staging area (32 groups of 64 videos: ~2,000 videos).
MAX_GROUPS_IN_FLIGHT = 32


def group_name(group: int) -> str:
    return f"{group:06d}"


def atomic_write_bytes(path: AnyPath, data: bytes) -> None:
    """Locally a temporary name, synced and renamed; on object storage one upload (visible when whole)."""
    write_atomic(path, data, TMP_PREFIX)


def atomic_write_json(path: AnyPath, value: object) -> None:
    atomic_write_bytes(path, json.dumps(value, indent=2, sort_keys=True).encode("utf-8"))


@dataclass
class GroupSummary:
    group: int
    videos: int
    ok: int
    failures: dict[str, int] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)
    # Videos per Ray node that ran their video stage (videos.node_id); markers written before it lack it.
    nodes: dict[str, int] = field(default_factory=dict)


def platform_row(record: VideoRecord) -> dict:
    """videos' platform columns (stages/platform_info.py): null for a local file or a failed extraction."""
    columns = dict.fromkeys(PLATFORM_COLUMNS) | (record.platform or {})
    return columns | {"info_json": record.info_json, "ytdlp_version": record.ytdlp_version}


def table_rows(records: list[VideoRecord]) -> dict[str, list[dict]]:
    """Rows of every table for these records, in source order. Source and error are redacted here too (a
    record's error may have been set without fail()): no credential reaches a table."""
    rows: dict[str, list[dict]] = {name: [] for name in schemas.TABLES}
    for record in records:
        rows["videos"].append(
            {
                "video_id": record.video_id,
                "source": redact(record.source),
                "source_index": record.source_index,
                "status": record.status,
                "error": redact(record.error),
                "duration_s": record.duration_s,
                "fps": record.fps,
                "width": record.width,
                "height": record.height,
                "rotation": record.rotation,
                "has_audio": record.has_audio,
                "video_codec": record.video_codec,
                "file_size": record.file_size,
                "language": record.language,
                "node_id": record.node_id,
                "n_clips": len(record.clips) + len(record.filtered_clips),
                "n_frames": len(record.frames) + len(record.filtered_frames),
                "n_segments": len(record.transcript),
                "timings": sorted(record.timings.items()),
                "counters": sorted(record.counters.items()),
                "content_hash": record.content_hash,
                "duplicate_of": record.duplicate_of,
                "filter_reason": record.filter_reason,
                "language_probability": record.language_probability,
                "no_speech_prob": record.no_speech_prob,
                "avg_logprob": record.avg_logprob,
                "words_per_s": record.words_per_s,
                "audio_dbfs": record.audio_dbfs,
                "motion": record.motion,
                **platform_row(record),
            }
        )
        # The platform's chapters are its metadata: kept whatever became of the video.
        for chapter_idx, chapter in enumerate(record.chapters):
            rows["chapters"].append({"video_id": record.video_id, "chapter_idx": chapter_idx, **chapter})
        # A filtered video keeps its clips', keyframes' and transcript's rows, with their signals.
        if not record.ok and record.status != FILTERED:
            continue
        for clip in sorted(record.clips + record.filtered_clips, key=lambda c: c.clip_idx):
            rows["clips"].append(
                {
                    "video_id": record.video_id,
                    "clip_idx": clip.clip_idx,
                    "start_s": clip.start_s,
                    "end_s": clip.end_s,
                    "boundary": clip.boundary,
                    "boundary_detector": clip.boundary_detector,
                    "boundary_score": clip.boundary_score,
                    "status": FILTERED if clip.filter_reason else OK,
                    "filter_reason": clip.filter_reason,
                    "motion": clip.motion,
                    "brightness": clip.brightness,
                    "sharpness": clip.sharpness,
                    "frozen_fraction": clip.frozen_fraction,
                    "narration_status": clip.narration_status,
                    "narration": clip.narration,
                }
            )
        for frame in sorted(record.frames + record.filtered_frames, key=lambda f: f.frame_idx):
            rows["frames"].append(
                {
                    "video_id": record.video_id,
                    "clip_idx": frame.clip_idx,
                    "frame_idx": frame.frame_idx,
                    "t_s": frame.t_s,
                    "width": frame.width,
                    "height": frame.height,
                    "caption": frame.caption,
                    "phash": frame.phash,
                    "aesthetic": frame.aesthetic,
                    "nsfw": frame.nsfw,
                    "status": FILTERED if frame.filter_reason else OK,
                    "filter_reason": frame.filter_reason,
                }
            )
            if frame.embedding is not None:
                rows["embeddings"].append(
                    {
                        "video_id": record.video_id,
                        "clip_idx": frame.clip_idx,
                        "frame_idx": frame.frame_idx,
                        "embedding": frame.embedding,
                    }
                )
        for segment in record.transcript:
            rows["transcripts"].append(
                {
                    "video_id": record.video_id,
                    "seg_idx": segment.seg_idx,
                    "start_s": segment.start_s,
                    "end_s": segment.end_s,
                    "text": segment.text,
                    "avg_logprob": segment.avg_logprob,
                    "no_speech_prob": segment.no_speech_prob,
                    "text_source": record.text_source or WHISPER,
                }
            )
        document = record.document
        if document is not None:
            rows["documents"].append(
                {
                    "doc_id": document.doc_id,
                    "video_id": record.video_id,
                    "text_list": [s.text for s in document.sentences],
                    "sentence_start_s": [s.start_s for s in document.sentences],
                    "sentence_end_s": [s.end_s for s in document.sentences],
                    "sentence_source": [s.source for s in document.sentences],
                    "image_info": record.image_info(),
                    "similarity_matrix": document.similarity,
                    "assignment": document.assignment,
                    "n_tokens": document.n_tokens,
                    # A document rule (stages/curation.py) filters the video and keeps its document.
                    "status": record.status,
                    "filter_reason": record.filter_reason,
                }
            )
    return rows


def tar_end(length: int) -> bytes:
    """What ends a tar whose members take `length` bytes, as tarfile ends one: two zero blocks, then zeros
    to a whole record."""
    end = 2 * tarfile.BLOCKSIZE
    return bytes(end + (-(length + end) % tarfile.RECORDSIZE))


def write_shards(out: AnyPath, group: int, formats: list[str], parts: list[ShardPart]) -> None:
    """A group's tar per layout: its staged parts' members in source order, each tar visible only when
    whole (open_atomic). The build runs this as a Ray task on some node (ray_runner.on_cluster), so the
    bytes go from the parts to the tars there; each part is read once, for every layout. Every part is
    checked to be there first (one listing): a missing one fails before any upload starts."""
    name = group_name(group)
    folder = out / STATE_DIR / PARTS_DIR / name
    staged = {path.name for path in folder.glob("*.part")} if parts else set()
    missing = [location(part.path).name for part in parts if location(part.path).name not in staged]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} staged samples are not under {folder} (e.g. {missing[0]}): --out must be "
            "storage that every Ray node reaches (object storage, or a filesystem they share)"
        )
    with ExitStack() as stack:
        sinks = {
            fmt: stack.enter_context(open_atomic(out / "shards" / fmt / f"{name}.tar", TMP_PREFIX)) for fmt in formats
        }
        written = dict.fromkeys(formats, 0)
        for part in parts:
            data = memoryview(location(part.path).read_bytes())
            for fmt, (offset, length) in part.spans.items():
                if fmt in sinks:
                    sinks[fmt].write(data[offset : offset + length])
                    written[fmt] += length
        for fmt, sink in sinks.items():
            sink.write(tar_end(written[fmt]))


def make_shards_here(out: AnyPath, group: int, formats: list[str], parts: list[ShardPart]) -> Future:
    """write_shards in this process, as a finished Future (the build hands the writer a Ray task instead)."""
    future: Future = Future()
    try:
        future.set_result(write_shards(out, group, formats, parts))
    except Exception as exc:
        future.set_exception(exc)
    return future


class CorpusWriter:
    def __init__(self, out: AnyPath, formats: list[str]):
        # Absolute: the workers that stage samples and make the tars may run in another folder.
        self.out = out.resolve()
        self.formats = list(formats)
        self.groups_dir = self.out / STATE_DIR / "groups"
        self.parts_dir = self.out / STATE_DIR / PARTS_DIR
        # Done groups' counts, read from the markers once and kept up to date as groups are written: at
        # 4,700 groups, re-reading every marker for each group written cost ~100 ms a group.
        self._summaries: dict[int, GroupSummary] | None = None
        # How a group's tars are made: here by default; the build sets a Ray task (ray_runner.on_cluster).
        self.make_shards: Callable[[AnyPath, int, list[str], list[ShardPart]], Future] = make_shards_here
        # Called with each group marked (the build counts and reports them).
        self.on_group_done: Callable[[GroupSummary], None] | None = None
        # Groups whose tables are written and whose tars are being made, oldest first.
        self._in_flight: dict[int, tuple[GroupSummary, Future]] = {}

    def staging_for(self, group: int) -> str:
        """Where the last stage stages the samples of the group's videos (VideoRecord.staging)."""
        return str(self.parts_dir / group_name(group))

    def _group_files(self, group: int) -> list[AnyPath]:
        name = group_name(group)
        files = [self.out / table / f"part-{name}.parquet" for table in schemas.TABLES]
        files += [self.out / "shards" / fmt / f"{name}.tar" for fmt in self.formats]
        return files

    def _read_markers(self) -> dict[int, GroupSummary]:
        summaries: dict[int, GroupSummary] = {}
        if self.groups_dir.exists():
            for marker in self.groups_dir.glob("*.json"):
                if marker.stem.isdigit() and marker.stem == group_name(int(marker.stem)):
                    summary = GroupSummary(**json.loads(marker.read_text()))
                    summaries[summary.group] = summary
        return summaries

    def _done(self) -> dict[int, GroupSummary]:
        if self._summaries is None:
            self._summaries = self._read_markers()
        return self._summaries

    def done_groups(self) -> set[int]:
        return set(self._done())

    def recover(self) -> None:
        """Remove what a killed run left half-done, and rewrite the manifests from the done markers.

        The build owns every `*.parquet` of its table folders and every `*.tar` of its shard folders
        (readers take them all): one that is not a done group's file, under the very name the writer
        gives it, is removed, whatever its name. Other files there are left alone.
        """
        self._summaries = self._read_markers()
        keep = {path for group in self._summaries for path in self._group_files(group)}
        if not is_remote(self.out):  # object storage gets no temporary names: an upload shows when whole
            for path in self.out.rglob(f"{TMP_PREFIX}*"):
                path.unlink()
        # Staged samples belong to groups this run builds again whole, or to done groups whose parts a kill
        # kept from being removed.
        remove_tree(self.parts_dir)
        folders = [(self.out / table, "*.parquet") for table in schemas.TABLES]
        folders += [(self.out / "shards" / fmt, "*.tar") for fmt in self.formats]
        for folder, pattern in folders:
            for path in folder.glob(pattern):
                if path not in keep and (is_remote(path) or path.is_file()):
                    path.unlink()
        self.write_manifests()

    def reopen(self, groups: set[int]) -> None:
        """Take done groups back so that the build writes them again whole: each marker goes first, then
        the group's files (a kill in between leaves files without a marker, which recover() removes)."""
        done = self._done()
        for group in sorted(groups & set(done)):
            (self.groups_dir / f"{group_name(group)}.json").unlink()
            del done[group]
            for path in self._group_files(group):
                path.unlink(missing_ok=True)
        self.write_manifests()

    def write_group(self, group: int, records: list[VideoRecord]) -> GroupSummary:
        """Write the group's tables and start making its tars from the staged parts of its ok records (a
        group without any gets its empty tars here, no task); then finish every group whose tars are
        made (finish_groups). With the default make_shards that is this group, at once."""
        records = sorted(records, key=lambda r: r.source_index)
        name = group_name(group)
        for table, rows in table_rows(records).items():
            sink = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(rows, schema=schemas.TABLES[table]), sink)
            atomic_write_bytes(self.out / table / f"part-{name}.parquet", sink.getvalue())
        summary = GroupSummary(group, len(records), sum(r.ok for r in records))
        for record in records:
            if not record.ok:
                summary.failures[record.status] = summary.failures.get(record.status, 0) + 1
        summary.nodes = dict(sorted(Counter(r.node_id for r in records if r.node_id).items()))
        parts = [record.shard_part for record in records if record.ok and record.shard_part is not None]
        for fmt in self.formats:
            summary.samples[fmt] = sum(fmt in part.spans for part in parts)
        start = self.make_shards if parts else make_shards_here
        self._in_flight[group] = (summary, start(self.out, group, self.formats, parts))
        self.finish_groups()
        return summary

    def finish_groups(self, wait: bool = False) -> None:
        """Mark the groups whose tars are made (with wait: all, once made), waiting for the oldest while
        more than MAX_GROUPS_IN_FLIGHT are. The marker comes after every file of the group, the manifests
        after the markers, and the staged parts go last (a kill before that leaves them to recover())."""
        finished: list[GroupSummary] = []
        for group, (summary, future) in list(self._in_flight.items()):
            if not (wait or future.done() or len(self._in_flight) > MAX_GROUPS_IN_FLIGHT):
                continue
            try:
                future.result()
            except Exception as exc:  # the task's own error, or Ray's when it gave up on the task
                message = " ".join(str(exc).split())
                raise StorageError(f"cannot write the shards of group {group_name(group)}: {message}") from exc
            self._check_tars_here(group)
            del self._in_flight[group]
            atomic_write_json(self.groups_dir / f"{group_name(group)}.json", summary.__dict__)
            self._done()[group] = summary
            finished.append(summary)
        if not finished:
            return
        self.write_manifests()
        for summary in finished:
            remove_tree(self.parts_dir / group_name(summary.group))
            if self.on_group_done:
                self.on_group_done(summary)

    def _check_tars_here(self, group: int) -> None:
        """A local --out: the tars task ran on some node, and wrote to *its* disk. Unless every node shares
        the folder, that may not be this one; a marker here over tars elsewhere would be a group done with
        no shard, skipped by every rerun. One stat per layout before the marker. (Object storage is the
        same from every node.)"""
        if is_remote(self.out):
            return
        name = group_name(group)
        missing = [fmt for fmt in self.formats if not (self.out / "shards" / fmt / f"{name}.tar").is_file()]
        if missing:
            raise StorageError(
                f"the shards of group {name} were written, but not where this machine sees {self.out} "
                f"(no {missing[0]} tar): --out must be storage that every Ray node reaches (object storage, or "
                "a filesystem they share)"
            )

    def group_summaries(self) -> list[GroupSummary]:
        done = self._done()
        return [done[group] for group in sorted(done)]

    def write_manifests(self) -> None:
        summaries = self.group_summaries()
        for fmt in self.formats:
            sizes = {f"{group_name(s.group)}.tar": s.samples.get(fmt, 0) for s in summaries}
            for name in SIZES_FILES:
                atomic_write_json(self.out / "shards" / fmt / name, sizes)
