"""`cosmo-data filter CORPUS --config FILE`: apply curation rules again to a built corpus, from the signals
its tables hold, without decoding a video or running a model, and rewrite tables and shards at once
(corpus/rewrite.py).

Rules judge what is still "ok", in the order the build applies them (stages/rules.py, the same verdicts):
clips, then keyframes (a keyframe of a filtered clip goes with it), then videos left without a clip or a
keyframe, static-and-silent videos, speech rules, keyframes over the CLIP predictors' scores (NSFW), and
documents over their images' matched similarity, aesthetic score and NSFW probability.
Filtering only removes: an item filtered before stays so whatever the new rules say, since the stages
after a rule never ran for what it dropped (rebuild to get it back).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa

from cosmo_data.corpus.rewrite import RewriteSummary, rewrite_groups
from cosmo_data.schemas.config import CurationConfig
from cosmo_data.schemas.corpus_layout import STATE_DIR
from cosmo_data.schemas.records import FILTERED, OK
from cosmo_data.stages import rules
from cosmo_data.storage import AnyPath, location


@dataclass
class FilterSummary:
    # rule -> table -> rows it filtered now (videos, clips, frames, documents).
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)
    rewrite: RewriteSummary | None = None


def _rows(table: pa.Table) -> list[dict]:
    return table.to_pylist()


def _ok(row: dict) -> bool:
    return row.get("status") in (None, OK)


def apply_rules(tables: dict[str, pa.Table], curation: CurationConfig, *, captions: bool) -> FilterSummary:
    """Judge the ok items of whole tables again; the tables given are replaced by the judged ones."""
    summary = FilterSummary()
    videos = {row["video_id"]: row for row in _rows(tables["videos"])}
    clips, frames, documents = _rows(tables["clips"]), _rows(tables["frames"]), _rows(tables["documents"])

    def drop(row: dict, table: str, rule: str) -> None:
        row["status"], row["filter_reason"] = FILTERED, rule
        summary.dropped.setdefault(rule, {}).setdefault(table, 0)
        summary.dropped[rule][table] += 1

    def count(video_id: str, rule: str) -> None:
        """As the build counts: clips and keyframes a rule took, and videos a video rule took."""
        video = videos[video_id]
        counters = dict(video.get("counters") or [])
        counters[f"dropped_{rule}"] = counters.get(f"dropped_{rule}", 0) + 1
        video["counters"] = sorted(counters.items())

    def drop_video(video: dict, rule: str, message: str, *, counted: bool = False) -> None:
        drop(video, "videos", rule)
        video["error"] = message
        if not counted:
            count(video["video_id"], rule)

    live = {video_id for video_id, video in videos.items() if video["status"] == OK}
    clip_reason: dict[tuple[str, int], str] = {}
    for clip in clips:
        if clip["video_id"] in live and _ok(clip):
            rule = rules.clip_failure(
                curation.clip,
                duration_s=clip["end_s"] - clip["start_s"],
                motion=clip["motion"],
                brightness=clip["brightness"],
                sharpness=clip["sharpness"],
                frozen_fraction=clip["frozen_fraction"],
            )
            if rule:
                drop(clip, "clips", rule)
                count(clip["video_id"], rule)
                clip_reason[(clip["video_id"], clip["clip_idx"])] = rule
    for frame in frames:
        if frame["video_id"] in live and _ok(frame):
            rule = clip_reason.get((frame["video_id"], frame["clip_idx"]))
            if rule is None:
                rule = rules.frame_failure(curation.frame, width=frame["width"], height=frame["height"])
                if rule:
                    count(frame["video_id"], rule)
            if rule:
                drop(frame, "frames", rule)

    for kind, items in (("clip", clips), ("keyframe", frames)):
        left: dict[str, list[dict]] = {}
        for item in items:
            left.setdefault(item["video_id"], []).append(item)
        for video_id, own in left.items():
            if video_id in live and not any(_ok(item) for item in own):
                rule = Counter(item["filter_reason"] for item in own).most_common(1)[0][0]
                drop_video(videos[video_id], rule, f"every {kind} failed a rule ({rule})", counted=True)
                live.discard(video_id)

    for video_id in sorted(live):
        video = videos[video_id]
        # The licence rule judges what yt-dlp downloaded (as the build does, from its metadata).
        downloaded = video.get("ytdlp_version") is not None
        rule = (
            (downloaded and rules.license_failure(curation.video.licenses, video.get("license")))
            or rules.picture_failure(
                curation.video, motion=video["motion"], has_audio=video["has_audio"], audio_dbfs=video["audio_dbfs"]
            )
            or rules.speech_failure(
                curation.video,
                words_per_s=video["words_per_s"],
                captions=captions,
                language=video["language"],
                language_probability=video["language_probability"],
                no_speech_prob=video["no_speech_prob"],
                avg_logprob=video["avg_logprob"],
            )
        )
        if rule:
            drop_video(video, rule, f"fails curation rule {rule}")
            live.discard(video_id)

    # A keyframe failing a scored rule (NSFW) takes its clip with it, as in the build: the footage leaves
    # the COSMO layout, and the keyframe's caption every layout's text (corpus/edits.py).
    clip_rows = {(clip["video_id"], clip["clip_idx"]): clip for clip in clips}
    scored: dict[str, str] = {}
    for frame in frames:
        if frame["video_id"] in live and _ok(frame):
            rule = rules.scored_frame_failure(curation.frame, nsfw=frame["nsfw"])
            if rule:
                drop(frame, "frames", rule)
                count(frame["video_id"], rule)
                clip = clip_rows.get((frame["video_id"], frame["clip_idx"]))
                if clip is not None and _ok(clip):
                    drop(clip, "clips", rule)
                    scored[frame["video_id"]] = rule
    for video_id, rule in scored.items():  # as the build: a video left with no clip goes under the rule
        if not any(_ok(clip) for key, clip in clip_rows.items() if key[0] == video_id):
            drop_video(videos[video_id], rule, f"every clip had a keyframe that failed a rule ({rule})", counted=True)
            live.discard(video_id)

    # A document whose images all went now is filtered with its video by rewrite_corpus, as in the build.
    ok_frames = {(f["video_id"], f["frame_idx"]): f for f in frames if _ok(f)}
    for document in documents:
        if document["video_id"] not in live or not _ok(document):
            continue
        images = [
            (info, ok_frames[(document["video_id"], info["frame_idx"])])
            for info in document["image_info"]
            if (document["video_id"], info["frame_idx"]) in ok_frames
        ]
        rule = rules.document_failure(
            curation.document,
            matched_similarities=[info["matched_sim"] for info, _ in images],
            aesthetics=[frame["aesthetic"] for _, frame in images if frame["aesthetic"] is not None],
            nsfw=[frame["nsfw"] for _, frame in images if frame["nsfw"] is not None],
        )
        if rule:
            drop(document, "documents", rule)
            drop_video(videos[document["video_id"]], rule, f"fails curation rule {rule}")

    for name, rows in (("videos", list(videos.values())), ("clips", clips), ("frames", frames)):
        tables[name] = pa.Table.from_pylist(rows, schema=tables[name].schema)
    tables["documents"] = pa.Table.from_pylist(documents, schema=tables["documents"].schema)
    return summary


def filter_corpus(corpus: AnyPath | str, curation: CurationConfig, *, record: bool = True) -> FilterSummary:
    """Re-apply the rules to a built corpus and rewrite it group by group (old files intact until the new
    are complete), under the corpus's lock. record: keep the rules in _state/ for groups a later build
    writes again."""
    corpus = location(corpus)
    captions = _built_with_captions(corpus)
    summary = FilterSummary()

    def change(group: int, tables: dict[str, pa.Table]) -> dict[str, pa.Table]:
        for rule, dropped in apply_rules(tables, curation, captions=captions).dropped.items():
            for table, n in dropped.items():
                summary.dropped.setdefault(rule, {}).setdefault(table, 0)
                summary.dropped[rule][table] += n
        return tables

    step = {"command": "filter", "curation": curation.model_dump(mode="json")} if record else None
    summary.rewrite = rewrite_groups(corpus, change, step)
    return summary


def _built_with_captions(corpus: AnyPath) -> bool:
    run = corpus / STATE_DIR / "run.json"
    if not run.exists():
        return True
    return bool(json.loads(run.read_text()).get("config", {}).get("caption", {}).get("enabled", True))
