"""`cosmo-data build`: sources in, Parquet tables and shards out, resumable group by group."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cosmo_data.pipeline.breaker import Breaker, ExtractorBroken
from cosmo_data.pipeline.progress import Progress
from cosmo_data.pipeline.ray_runner import (
    RayCluster,
    check_out_reachable,
    check_ray_address,
    on_cluster,
    ray_for_build,
    run_stages,
)
from cosmo_data.pipeline.sources import SourceRow, caption_key, read_exclude_ids, read_source_captions, read_sources
from cosmo_data.pipeline.writer import STATE_DIR, CorpusWriter, GroupSummary, atomic_write_json, write_shards
from cosmo_data.schemas.config import BuildConfig
from cosmo_data.schemas.records import EXCLUDED, FAILURES, INVALID_SOURCE, RETRYABLE, VideoRecord
from cosmo_data.stages.base import Stage
from cosmo_data.stages.captions import attach_source_transcript
from cosmo_data.stages.ytdlp_access import (
    ACCESS_SETTINGS,
    YTDLP_VERSION,
    AccessError,
    check_access,
    js_runtime_missing,
    redacted_settings,
)
from cosmo_data.storage import AnyPath, is_remote, location
from cosmo_data.storage.corpus_state import finish_pending_rewrite


class BuildError(Exception):
    """The build cannot start or cannot finish; the CLI prints the message as one line."""


@dataclass
class BuildResult:
    out: AnyPath
    sources: int
    ok: int
    failures: dict[str, int] = field(default_factory=dict)
    groups_written: int = 0
    groups_resumed: int = 0
    groups_reopened: int = 0  # finished groups taken back to retry their failures (--retry-failed)
    # The failures of `failures` that may pass on a rerun with --retry-failed (schemas.records.RETRYABLE).
    retryable: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    ray: RayCluster | None = None  # None when every video was written before (resume) or failed early
    # What `filter`/`dedup` had applied, applied again to the groups written now (cli.py, corpus/reapply.py).
    curation_reapplied: list[str] = field(default_factory=list)


def make_stages(config: BuildConfig) -> list[Stage]:
    # Imported here so that `cosmo-data stats` and friends never pay for torch.
    from cosmo_data.stages.asr import AsrStage
    from cosmo_data.stages.assign import AssignStage
    from cosmo_data.stages.caption import CaptionStage
    from cosmo_data.stages.clip_score import ClipScoreStage
    from cosmo_data.stages.curation import DOCUMENT, PICTURE, SPEECH, CurationStage
    from cosmo_data.stages.document import DocumentStage
    from cosmo_data.stages.narrate import NarrateStage
    from cosmo_data.stages.shard_samples import ShardSamplesStage
    from cosmo_data.stages.video import VideoStage

    # Curation right after the stage whose signals it judges (cheap rules first: what they drop never
    # reaches a model), in that stage's pool.
    stages: list[Stage] = [VideoStage(config), CurationStage(config, PICTURE)]
    if config.asr.enabled and config.asr.platform_captions != "only":
        stages.append(AsrStage(config))
        stages.append(CurationStage(config, SPEECH))
    if config.caption.enabled:
        stages.append(CaptionStage(config))
    stages.append(DocumentStage(config))
    if config.narration.enabled:  # rewrites the document's sentences per clip; CLIP scores what it wrote
        stages.append(NarrateStage(config))
    stages.append(ClipScoreStage(config))
    stages.append(AssignStage(config))
    stages.append(CurationStage(config, DOCUMENT))
    stages.append(ShardSamplesStage(config))
    return stages


# Settings that never change what a build writes, beside every `resources` / `*_resources` section (how
# wide it runs) and ray_address (where): where temporary files go, the free disk a worker insists on, how
# many images or sentences go through a model at once. Deadlines are not among them: they decide which
# videos fail.
RUN_ONLY_SETTINGS = {
    # How the platform is reached (identities, pacing) decides when a video arrives, not what is written.
    *(("download", key) for key in ACCESS_SETTINGS),
    ("video", "tmp_dir"),
    ("video", "min_free_disk_gb"),
    ("caption", "images_per_forward"),
    ("clip_score", "images_per_forward"),
    ("clip_score", "sentences_per_forward"),
    ("output", "shared_filesystem"),
}


def build_fingerprint(rows: list[SourceRow], config: BuildConfig) -> str:
    """What decides the output: the sources and every setting except where and how wide it runs."""
    settings = config.model_dump(mode="json", exclude={"ray_address"})
    for name, section in settings.items():
        if isinstance(section, dict):
            for key in list(section):
                if key == "resources" or key.endswith("_resources") or (name, key) in RUN_ONLY_SETTINGS:
                    del section[key]
    decided = {"sources": [r.video_id for r in rows], "config": settings}
    excluded = [r.video_id for r in rows if r.status == EXCLUDED]
    if excluded:  # --exclude-ids decides which videos are built
        decided["excluded"] = excluded
    payload = json.dumps(decided, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _check_resume(out: AnyPath, fingerprint: str, rows: list[SourceRow], config: BuildConfig) -> None:
    run_file = out / STATE_DIR / "run.json"
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        if previous.get("fingerprint") != fingerprint:
            raise BuildError(
                f"{out} holds a build of other sources or settings; resume needs the same sources and "
                "config, or choose a new --out"
            )
        return
    atomic_write_json(
        run_file,
        {
            "fingerprint": fingerprint,
            "sources": len(rows),
            "seed": config.seed,
            "config": redacted_settings(config.model_dump(mode="json"), config.download),
        },
    )


def _record_for(row: SourceRow, staging: str | None = None, captions: dict[str, dict] | None = None) -> VideoRecord:
    """The row's record; staging: where the last stage is to stage its samples (its group's folder);
    captions: the transcripts the sources brought (pipeline/sources.py read_source_captions)."""
    record = VideoRecord(row.video_id, row.source, row.source_index, source_kind=row.kind, locator=row.locator)
    record.staging = staging
    if captions:
        attach_source_transcript(record, captions.get(caption_key(row)))
    if row.error:  # invalid, a duplicate or excluded: never sent through the stages
        record.fail(row.status or INVALID_SOURCE, row.error)
        record.duplicate_of = row.duplicate_of
    return record


def retry_statuses(statuses: Collection[str] | None) -> frozenset[str] | None:
    """What --retry-failed retries: None for a plain build, every retryable status when none is named."""
    if statuses is None:
        return None
    unknown = sorted(set(statuses) - FAILURES)
    if unknown:
        raise BuildError(
            f"{', '.join(unknown)} is not a failure status; retryable ones: {', '.join(sorted(RETRYABLE))}"
        )
    return frozenset(statuses) or RETRYABLE


def build(
    source_paths: list[Path | str],
    out: AnyPath | str,
    config: BuildConfig,
    *,
    progress: Progress | None = None,
    stages_factory: Callable[[BuildConfig], list[Stage]] = make_stages,
    retry_failed: Collection[str] | None = None,
    exclude_ids: AnyPath | str | None = None,
) -> BuildResult:
    """Build (or resume) the corpus under out. retry_failed: statuses whose videos' finished groups are
    taken back and built again whole (an empty collection: every retryable status); None retries nothing.
    Sources and out may be local paths or object storage URIs (s3://bucket/key). exclude_ids: a file of
    source ids (an evaluation set) whose rows are written with status "excluded" and never built."""
    started = time.perf_counter()
    retry = retry_statuses(retry_failed)
    out = location(out)
    excluded = read_exclude_ids(exclude_ids) if exclude_ids else None
    rows = read_sources([location(path) for path in source_paths], exclude_ids=excluded)
    source_captions = read_source_captions(source_paths)
    if config.ray_address:
        check_ray_address(config.ray_address)
    if not rows:
        raise BuildError("the sources hold no video: every line was blank or a comment")
    try:
        check_access(config.download)
    except AccessError as exc:
        raise BuildError(str(exc)) from None
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(out, build_fingerprint(rows, config), rows, config)
    writer = CorpusWriter(out, config.output.formats)
    finish_pending_rewrite(out)  # a killed filter's switch, or its staged files would later cover new groups
    writer.recover()
    reopened: set[int] = set()
    if retry:
        # Groups are fixed by source order, so a group taken back is rebuilt from all its sources and
        # rewritten whole: nothing is duplicated, and the other groups stay as they are.
        reopened = {s.group for s in writer.group_summaries() if retry & set(s.failures)}
        writer.reopen(reopened)

    per_group = config.output.videos_per_shard
    done = writer.done_groups()
    pending: dict[int, dict[int, VideoRecord | None]] = {}
    for row in rows:
        group = row.source_index // per_group
        if group not in done:
            pending.setdefault(group, {})[row.source_index] = None
    progress = progress or Progress(total=len(rows))
    if any(row.kind == "youtube" for row in rows) and (warning := js_runtime_missing(config.download)):
        progress.warn(warning)
    breaker = Breaker(config.download.breaker_window, config.download.breaker_share)
    progress.resumed(sum(1 for r in rows if r.source_index // per_group in done))
    written = 0

    def group_done(summary: GroupSummary) -> None:
        nonlocal written
        written += 1
        progress.group_written(summary.group)

    writer.on_group_done = group_done

    def on_record(record: VideoRecord) -> None:
        writer.finish_groups()  # mark the groups whose tars were made meanwhile
        group = record.source_index // per_group
        members = pending.get(group)
        if members is None or members.get(record.source_index) is not None:
            return  # a record Ray handed back twice (a retried task): its group holds it once
        members[record.source_index] = record
        progress.record_done(record)
        try:
            breaker.record_done(record)
        except ExtractorBroken as exc:
            raise BuildError(str(exc)) from None
        if all(m is not None for m in members.values()):
            free_gb = float("inf") if is_remote(out) else shutil.disk_usage(out).free / 1e9
            if free_gb < config.video.min_free_disk_gb:
                raise BuildError(f"only {free_gb:.2f} GB free under {out}; stopped before writing (resume later)")
            writer.write_group(group, list(members.values()))  # tables now; the tars on a worker
            del pending[group]

    # Row numbers, not records: at HowTo100M's 1.2M videos the records would hold ~1 GB in the driver
    # for the whole run. Each is made as it is handed to Ray.
    to_process: list[int] = []
    for group_members in list(pending.values()):
        for index in list(group_members):
            if rows[index].error:
                on_record(_record_for(rows[index]))
            else:
                to_process.append(index)
    cluster = None
    if to_process:
        stages = stages_factory(config)
        with ray_for_build(config.ray_address, stages, len(to_process)) as cluster:
            check_out_reachable(cluster, out, shared=config.output.shared_filesystem)
            for shortfall in cluster.shortfalls:
                progress.warn(shortfall)
            # Shard bytes never come to the driver: workers stage each video's samples in its group's
            # folder, and a Ray task on some node makes a finished group's tars from them.
            writer.make_shards = on_cluster(write_shards)
            records = (_record_for(rows[i], writer.staging_for(i // per_group), source_captions) for i in to_process)
            run_stages(records, stages, cluster, seed=config.seed, on_record=on_record)
            writer.finish_groups(wait=True)
    if pending:
        missing = sum(1 for members in pending.values() for m in members.values() if m is None)
        raise BuildError(f"{missing} videos never came back from the pipeline; rerun to resume")

    summaries = writer.group_summaries()
    result = BuildResult(
        out=out,
        sources=len(rows),
        ok=sum(s.ok for s in summaries),
        groups_written=written,
        groups_resumed=len(done),
        groups_reopened=len(reopened),
        wall_s=time.perf_counter() - started,
        ray=cluster,
    )
    nodes: dict[str, int] = {}
    for summary in summaries:
        for status, n in summary.failures.items():
            result.failures[status] = result.failures.get(status, 0) + n
        for node, n in summary.nodes.items():
            nodes[node] = nodes.get(node, 0) + n
    result.retryable = {status: n for status, n in result.failures.items() if status in RETRYABLE}
    atomic_write_json(
        out / "build.json",
        {
            "sources": result.sources,
            "ok": result.ok,
            "failures": result.failures,
            "retryable": result.retryable,
            "groups_written": written,
            "groups_resumed": len(done),
            "groups_reopened": len(reopened),
            "wall_s": round(result.wall_s, 3),
            "formats": config.output.formats,
            "seed": config.seed,
            "ray": asdict(cluster) if cluster else None,
            # Videos whose video stage ran on each Ray node, over every group written (resumed ones too).
            "videos_per_node": dict(sorted(nodes.items())),
            # The yt-dlp that downloaded (videos.ytdlp_version has it per video, failed ones too).
            "ytdlp_version": YTDLP_VERSION,
        },
    )
    progress.finish()
    return result
