"""Rewrite a built corpus from updated tables: every table part and every shard, switched in at once.

`cosmo-data filter`, `dedup` (and `narrate`) decide again what the tables hold and hand the whole tables
here. A video's samples leave every layout's shards when its `videos.status` is no longer "ok" or its
document's `status` is no longer "ok"; keyframes, clips and caption sentences that are no longer ok
leave the documents kept (corpus/edits.py); the other samples are copied byte for byte (their tar
members are cut out of the old tar as they are). Group markers' counts, `sizes.json` /
`num_samples.json` and build.json's totals follow.

Old files stay intact until the new set is complete: everything is first written under
`_state/rewrite/` with the same relative paths, then `_state/rewrite/complete.json` lists them, and only
then is each moved over its old file (a rename on a disk; an upload then a delete on object storage).
A rewrite killed before the list exists leaves the old corpus untouched (its staging is removed on the
next rewrite); one killed while moving is finished by whatever next reads or writes the corpus, before
it reads anything (storage/corpus_state.py), so the switch always runs to its end. A rewrite runs under
the corpus's lock, and records what it applied (`applied`) in `_state/curation.json`, switched in with
the rest: a build that later writes groups again applies the same steps to them (corpus/reapply.py).
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cosmo_data.corpus.edits import (
    EMPTY_SAMPLE,
    SampleEdit,
    edit_documents,
    emptied_cosmo_samples,
    filter_documents,
    filter_tar,
    kept_documents,
)
from cosmo_data.schemas.corpus_layout import SIZES_FILES, STATE_DIR
from cosmo_data.schemas.records import OK
from cosmo_data.schemas.tables import TABLES
from cosmo_data.storage import AnyPath, location, remove_tree, write_atomic
from cosmo_data.storage.corpus_state import (
    COMPLETE,
    REWRITE_STAGING,
    corpus_lock,
    finish_pending_rewrite,
    pending_rewrite,
)

# The curation steps applied to the corpus since it was built, in order (corpus/reapply.py).
APPLIED = "curation.json"


@dataclass
class GroupChange:
    """What a rewrite_groups change makes of a group: its tables, and its own edit of some documents'
    samples (doc_id: a function from a sample's json, any layout, to the new one), e.g. a new text."""

    tables: dict[str, pa.Table]
    samples: dict[str, Callable[[dict], dict]] = field(default_factory=dict)


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
    """Every table of the corpus, whole, conformed to the current schemas (a pending rewrite finished first)."""
    corpus = location(corpus)
    finish_pending_rewrite(corpus)
    tables = {}
    for name, schema in TABLES.items():
        parts = [
            pq.read_table(io.BytesIO(path.read_bytes())) for path in sorted((corpus / name).glob("part-*.parquet"))
        ]
        tables[name] = pa.concat_tables([conform(part, schema) for part in parts]) if parts else schema.empty_table()
    return tables


def applied_steps(corpus: AnyPath | str) -> list[dict]:
    """The curation steps recorded by rewrites of this corpus, oldest first."""
    path = location(corpus) / STATE_DIR / APPLIED
    return json.loads(path.read_text()) if path.exists() else []


def record_step(corpus: AnyPath | str, step: dict) -> None:
    """Record a curation step that changed nothing now (a rewrite records its own, switched in with it)."""
    corpus = location(corpus)
    write_atomic(corpus / STATE_DIR / APPLIED, _json(applied_steps(corpus) + [step]))


def rewrite_corpus(
    corpus: AnyPath | str,
    tables: dict[str, pa.Table],
    applied: dict | None = None,
    samples: dict[str, Callable[[dict], dict]] | None = None,
) -> RewriteSummary:
    """Rewrite a finished build from these whole tables (see the module).

    tables: every table of TABLES, whole, as read_tables gave them and then changed; status "ok" or not
    on videos, documents, clips and frames decides what leaves. applied: the step to record (e.g.
    {"command": "filter", "curation": {...}}), or None. samples: per doc_id, an edit of its samples' json
    (GroupChange.samples; `narrate` gives documents new text). Under the corpus's lock; refused when a
    pending rewrite was found meanwhile (the tables were read from a corpus half switched)."""
    missing = sorted(set(TABLES) - set(tables))
    if missing:
        raise RewriteError(f"tables missing for the rewrite: {', '.join(missing)}")
    corpus = location(corpus)
    videos = tables["videos"]
    per_group = _videos_per_group(corpus)
    group_of = dict(zip(videos["video_id"].to_pylist(), (i // per_group for i in videos["source_index"].to_pylist())))
    by_group = {name: _split(table, group_of) for name, table in tables.items()}
    empty = {name: schema.empty_table() for name, schema in TABLES.items()}
    with corpus_lock(corpus, "rewrite"):
        if pending_rewrite(corpus):
            raise RewriteError(
                f"{corpus} holds a rewrite still being switched in: read the tables again after it is finished"
            )

        def change(group: int, _: dict[str, pa.Table]) -> GroupChange:
            group_tables = {name: by_group[name].get(group, empty[name]) for name in TABLES}
            documents = set(group_tables["documents"]["doc_id"].to_pylist())
            return GroupChange(group_tables, {doc: edit for doc, edit in (samples or {}).items() if doc in documents})

        return rewrite_groups(corpus, change, applied)


def rewrite_groups(
    corpus: AnyPath | str,
    change: Callable[[int, dict[str, pa.Table]], dict[str, pa.Table] | GroupChange],
    applied: dict | None = None,
) -> RewriteSummary:
    """Rewrite a finished build group by group: change(group, its tables as its parts hold them) returns
    them changed (statuses, document rows), or a GroupChange that also edits samples; only one group's
    tables are in memory at a time, and a group whose tables come back as they were (and no sample edit)
    keeps its files. applied: as for rewrite_corpus. Under the
    corpus's lock, after a pending rewrite is finished."""
    corpus = location(corpus)
    with corpus_lock(corpus, "rewrite"):
        finish_pending_rewrite(corpus)  # or drops the staging of one killed before it was complete
        return _rewrite(corpus, change, applied)


def _split(table: pa.Table, group_of: dict[str, int]) -> dict[int, pa.Table]:
    """The table's rows by their video's group: one sort, then slices (not a scan per group)."""
    groups = np.array([group_of.get(v, -1) for v in table["video_id"].to_pylist()], np.int64)
    order = np.argsort(groups, kind="stable")
    table, groups = table.take(pa.array(order)), groups[order]
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]]) if len(groups) else np.array([], np.int64)
    ends = np.r_[starts[1:], len(groups)]
    return {int(groups[s]): table.slice(s, e - s) for s, e in zip(starts, ends)}


def _read_group(corpus: AnyPath, name: str) -> dict[str, pa.Table]:
    tables = {}
    for table, schema in TABLES.items():
        path = corpus / table / f"part-{name}.parquet"
        tables[table] = (
            conform(pq.read_table(io.BytesIO(path.read_bytes())), schema) if path.exists() else schema.empty_table()
        )
    return tables


def _rewrite(corpus: AnyPath, change, applied: dict | None) -> RewriteSummary:
    markers = _read_markers(corpus)
    if not markers:
        raise RewriteError(f"{corpus} has no finished group (_state/groups/*.json): not a finished build")
    formats = (
        sorted(p.name for p in (corpus / "shards").iterdir() if p.is_dir()) if (corpus / "shards").is_dir() else []
    )
    absent = [f"shards/{fmt}/{g:06d}.tar" for fmt in formats for g in sorted(markers)]
    absent = [name for name in absent if not (corpus / name).exists()]
    if absent:
        raise RewriteError(
            f"{corpus} lacks {len(absent)} tar(s) of finished groups ({', '.join(absent[:3])}): their samples cannot "
            "be rewritten; remove those groups' _state/groups/<group>.json and rerun the build to write them again"
        )
    staging = corpus / STATE_DIR / REWRITE_STAGING
    remove_tree(staging)
    staged: list[str] = []

    def stage(relative: str, data: bytes) -> None:
        write_atomic(staging / relative, data)
        staged.append(relative)

    summary = RewriteSummary(groups=len(markers), videos_ok=0)
    for group, marker in sorted(markers.items()):
        name = f"{group:06d}"
        before = _read_group(corpus, name)
        changes = change(group, dict(before))
        changes = changes if isinstance(changes, GroupChange) else GroupChange(changes)
        tables = {table: conform(part, TABLES[table]) for table, part in changes.tables.items()}
        tables["documents"] = _documents_follow_videos(tables["documents"], tables["videos"])
        tables, edits = edit_documents(tables)
        for doc_id, then in changes.samples.items():
            edits.setdefault(doc_id, SampleEdit(set(), set())).then = then
        if "cosmo" in formats and edits:
            tables, edits = _without_clipless_cosmo_samples(corpus / "shards" / "cosmo" / f"{name}.tar", tables, edits)
        changed = bool(changes.samples) or any(not tables[table].equals(before[table]) for table in TABLES)
        if changed:
            kept = kept_documents(tables)
            for table_name, table in tables.items():
                sink = io.BytesIO()
                pq.write_table(table, sink)
                stage(f"{table_name}/part-{name}.parquet", sink.getvalue())
            statuses = Counter(tables["videos"]["status"].to_pylist())
            marker["ok"] = statuses.pop(OK, 0)
            marker["failures"] = dict(sorted(statuses.items()))
        summary.videos_ok += marker["ok"]
        for fmt in formats:
            n_kept, n_removed = marker.get("samples", {}).get(fmt, 0), 0
            if changed:
                data, n_kept, n_removed = filter_tar(
                    (corpus / "shards" / fmt / f"{name}.tar").read_bytes(), kept, edits
                )
                stage(f"shards/{fmt}/{name}.tar", data)
                marker.setdefault("samples", {})[fmt] = n_kept
            summary.samples[fmt] = summary.samples.get(fmt, 0) + n_kept
            summary.samples_removed[fmt] = summary.samples_removed.get(fmt, 0) + n_removed
        if changed:
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
    if applied is not None:
        stage(f"{STATE_DIR}/{APPLIED}", _json(applied_steps(corpus) + [applied]))
    # Everything is written: from here on the rewrite is finished, by this call or whatever comes next.
    write_atomic(staging / COMPLETE, _json(staged))
    finish_pending_rewrite(corpus)
    return summary


def _without_clipless_cosmo_samples(cosmo_tar: AnyPath, tables, edits):
    """Filter the documents whose COSMO sample an edit would leave without a clip (read from the group's
    COSMO tar), as the build filters a document one layout cannot hold."""
    emptied = emptied_cosmo_samples(cosmo_tar.read_bytes(), edits)
    if not emptied:
        return tables, edits
    message = "its COSMO sample lost every clip to the rules"
    tables = filter_documents(tables, dict.fromkeys(emptied, (EMPTY_SAMPLE, message)))
    return tables, {doc_id: edit for doc_id, edit in edits.items() if doc_id not in emptied}


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
