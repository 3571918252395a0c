"""Writing finished records: Parquet tables and webdataset shards, one output group at a time.

A group is a fixed slice of the source list (source_index // videos_per_shard), so shard membership
depends only on the sources, never on which worker finished first. A group is written whole:
every file goes to a temporary name and is renamed into place, then the group's done marker is written,
then the manifests (sizes.json, and num_samples.json for COSMO's loader) are rebuilt from the markers. A killed run therefore leaves either a
complete group or files that recover() removes; a rerun redoes exactly the groups without a marker.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cosmo_data.pipeline.shard_formats import SAMPLE_WRITERS
from cosmo_data.schemas import tables as schemas
from cosmo_data.schemas.corpus_layout import SIZES_FILES
from cosmo_data.schemas.records import FILTERED, VideoRecord

STATE_DIR = "_state"
TMP_PREFIX = ".tmp-"
# Shards are byte-identical across reruns: fixed member metadata, members in a fixed order.
TAR_MTIME = 0


def group_name(group: int) -> str:
    return f"{group:06d}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, value: object) -> None:
    atomic_write_bytes(path, json.dumps(value, indent=2, sort_keys=True).encode("utf-8"))


@dataclass
class GroupSummary:
    group: int
    videos: int
    ok: int
    failures: dict[str, int] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)


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


def tar_bytes(samples: list[dict[str, bytes]]) -> bytes:
    """A webdataset tar: members `<key>.<ext>`, grouped by sample, in a fixed order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            key = sample["__key__"]
            for ext in sorted(k for k in sample if k != "__key__"):
                data = sample[ext]
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                info.mtime = TAR_MTIME
                info.mode = 0o444
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class CorpusWriter:
    def __init__(self, out: Path, formats: list[str]):
        self.out = out
        self.formats = list(formats)
        self.groups_dir = out / STATE_DIR / "groups"

    def _group_files(self, group: int) -> list[Path]:
        name = group_name(group)
        files = [self.out / table / f"part-{name}.parquet" for table in schemas.TABLES]
        files += [self.out / "shards" / fmt / f"{name}.tar" for fmt in self.formats]
        return files

    def done_groups(self) -> set[int]:
        if not self.groups_dir.exists():
            return set()
        return {int(p.stem) for p in self.groups_dir.glob("*.json") if p.stem.isdigit()}

    def recover(self) -> None:
        """Remove what a killed run left half-done, and rebuild manifests from the done markers."""
        done = self.done_groups()
        for path in self.out.rglob(f"{TMP_PREFIX}*"):
            path.unlink()
        for table in schemas.TABLES:
            for part in (self.out / table).glob("part-*.parquet"):
                if int(part.stem.removeprefix("part-")) not in done:
                    part.unlink()
        for fmt in self.formats:
            for shard in (self.out / "shards" / fmt).glob("*.tar"):
                if not shard.stem.isdigit() or int(shard.stem) not in done:
                    shard.unlink()
        self.write_manifests()

    def _samples(self, records: list[VideoRecord]) -> dict[str, list[dict[str, bytes]]]:
        """Samples per format; a record that a format cannot hold fails in all, so formats never disagree."""
        samples: dict[str, list[dict[str, bytes]]] = {fmt: [] for fmt in self.formats}
        for record in records:
            per_format = {fmt: SAMPLE_WRITERS[fmt](record) for fmt in self.formats}
            empty = [fmt for fmt, sample in per_format.items() if sample is None]
            if record.ok and empty:
                # Every document is in every format, or in none: trainers mixing formats see one corpus.
                record.fail(FILTERED, f"document has nothing to write in the {', '.join(empty)} format")
                continue
            for fmt, sample in per_format.items():
                if sample is not None:
                    samples[fmt].append(sample)
        return samples

    def write_group(self, group: int, records: list[VideoRecord]) -> GroupSummary:
        records = sorted(records, key=lambda r: r.source_index)
        name = group_name(group)
        samples = self._samples(records)
        for table, rows in table_rows(records).items():
            sink = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(rows, schema=schemas.TABLES[table]), sink)
            atomic_write_bytes(self.out / table / f"part-{name}.parquet", sink.getvalue())
        summary = GroupSummary(group, len(records), sum(r.ok for r in records))
        for record in records:
            if not record.ok:
                summary.failures[record.status] = summary.failures.get(record.status, 0) + 1
        for fmt, fmt_samples in samples.items():
            atomic_write_bytes(self.out / "shards" / fmt / f"{name}.tar", tar_bytes(fmt_samples))
            summary.samples[fmt] = len(fmt_samples)
        # The marker comes after every file of the group, the manifests after the marker.
        atomic_write_json(self.groups_dir / f"{name}.json", summary.__dict__)
        self.write_manifests()
        return summary

    def group_summaries(self) -> list[GroupSummary]:
        summaries = []
        for group in sorted(self.done_groups()):
            data = json.loads((self.groups_dir / f"{group_name(group)}.json").read_text())
            summaries.append(GroupSummary(**data))
        return summaries

    def write_manifests(self) -> None:
        summaries = self.group_summaries()
        for fmt in self.formats:
            sizes = {f"{group_name(s.group)}.tar": s.samples.get(fmt, 0) for s in summaries}
            for name in SIZES_FILES:
                atomic_write_json(self.out / "shards" / fmt / name, sizes)
