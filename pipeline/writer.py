"""Writing finished records: Parquet tables and webdataset shards, one output group at a time.

A group is a fixed slice of the source list (source_index // videos_per_shard), so shard membership
depends only on the sources, never on which worker finished first. A group is written whole:
every file goes to a temporary name and is renamed into place, then the group's done marker is written,
then the manifests (sizes.json, and num_samples.json for COSMO's loader) are rewritten from the groups'
counts, which the writer reads from the markers once (recover) and keeps in memory. A killed run therefore
leaves either a complete group or files that recover() removes; a rerun redoes exactly the groups without a
marker. reopen() takes groups back (marker first, then files), so a rerun writes them again whole.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from cosmo_data.schemas import tables as schemas
from cosmo_data.schemas.corpus_layout import SIZES_FILES
from cosmo_data.schemas.records import VideoRecord
from cosmo_data.storage import AnyPath, is_remote, write_atomic

STATE_DIR = "_state"
TMP_PREFIX = ".tmp-"


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


def table_rows(records: list[VideoRecord]) -> dict[str, list[dict]]:
    """Rows of every table for these records, in source order."""
    rows: dict[str, list[dict]] = {name: [] for name in schemas.TABLES}
    for record in records:
        rows["videos"].append(
            {
                "video_id": record.video_id,
                "source": record.source,
                "source_index": record.source_index,
                "status": record.status,
                "error": record.error,
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
                "n_clips": len(record.clips),
                "n_frames": len(record.frames),
                "n_segments": len(record.transcript),
                "timings": sorted(record.timings.items()),
                "counters": sorted(record.counters.items()),
            }
        )
        if not record.ok:
            continue
        for clip in record.clips:
            rows["clips"].append(
                {
                    "video_id": record.video_id,
                    "clip_idx": clip.clip_idx,
                    "start_s": clip.start_s,
                    "end_s": clip.end_s,
                    "boundary": clip.boundary,
                    "boundary_detector": clip.boundary_detector,
                    "boundary_score": clip.boundary_score,
                }
            )
        for frame in record.frames:
            rows["frames"].append(
                {
                    "video_id": record.video_id,
                    "clip_idx": frame.clip_idx,
                    "frame_idx": frame.frame_idx,
                    "t_s": frame.t_s,
                    "width": frame.width,
                    "height": frame.height,
                    "caption": frame.caption,
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
                }
            )
    return rows


def tar_bytes(members: list[bytes]) -> bytes:
    """A webdataset tar of samples already made as tar members (stages/shard_samples.py), ended as
    tarfile ends one: two zero blocks, then zeros to a whole record."""
    data = b"".join(members) + bytes(2 * tarfile.BLOCKSIZE)
    return data + bytes(-len(data) % tarfile.RECORDSIZE)


class CorpusWriter:
    def __init__(self, out: AnyPath, formats: list[str]):
        self.out = out
        self.formats = list(formats)
        self.groups_dir = out / STATE_DIR / "groups"
        # Done groups' counts, read from the markers once and kept up to date as groups are written: at
        # 4,700 groups, re-reading every marker for each group written cost ~100 ms a group.
        self._summaries: dict[int, GroupSummary] | None = None

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
        for fmt in self.formats:
            members = [record.shard_members[fmt] for record in records if record.ok and fmt in record.shard_members]
            atomic_write_bytes(self.out / "shards" / fmt / f"{name}.tar", tar_bytes(members))
            summary.samples[fmt] = len(members)
        # The marker comes after every file of the group, the manifests after the marker.
        atomic_write_json(self.groups_dir / f"{name}.json", summary.__dict__)
        self._done()[group] = summary
        self.write_manifests()
        return summary

    def group_summaries(self) -> list[GroupSummary]:
        done = self._done()
        return [done[group] for group in sorted(done)]

    def write_manifests(self) -> None:
        summaries = self.group_summaries()
        for fmt in self.formats:
            sizes = {f"{group_name(s.group)}.tar": s.samples.get(fmt, 0) for s in summaries}
            for name in SIZES_FILES:
                atomic_write_json(self.out / "shards" / fmt / name, sizes)
