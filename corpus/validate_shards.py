"""`cosmo-data validate`, the shards: every layout's tars and manifests, each sample as its loader reads it."""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import tarfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
from PIL import Image

from cosmo_data.corpus.validation_report import TableFacts, ValidationReport, ids, plural
from cosmo_data.schemas.corpus_layout import COSMO_VIDEO_SPEED, SIZES_FILES, cosmo_frames_read
from cosmo_data.storage import open_binary

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def split_member(name: str) -> tuple[str, str]:
    """webdataset's split: the key is the basename up to its first dot, the rest is the extension."""
    directory, _, base = name.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{directory}/{key}" if directory else key), ext


def iter_samples(tar_path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) per run of consecutive members sharing a key, in tar order."""
    key: str | None = None
    members: dict[str, bytes] = {}
    with open_binary(tar_path) as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            member_key, ext = split_member(member.name)
            if member_key != key:
                if key is not None:
                    yield key, members
                key, members = member_key, {}
            members[ext] = tar.extractfile(member).read()
    if key is not None:
        yield key, members


def decode_problem(data: bytes) -> str | None:
    """None when the bytes decode as an image, else PIL's reason."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception as exc:  # PIL raises many types for bad data; each is a finding, not a crash
        return f"{type(exc).__name__}: {exc}"
    return None


def _json_member(members: dict[str, bytes], where: str, report: ValidationReport) -> dict[str, Any] | None:
    if "json" not in members:
        report.problem(f"{where}: no .json member")
        return None
    try:
        value = json.loads(members["json"])
    except ValueError as exc:
        report.problem(f"{where}: .json does not parse: {exc}")
        return None
    if not isinstance(value, dict):
        report.problem(f"{where}: .json is not an object")
        return None
    return value


def check_native_sample(
    key: str, members: dict[str, bytes], where: str, facts: TableFacts | None, report: ValidationReport
) -> None:
    meta = _json_member(members, where, report)
    if meta is None:
        return
    if meta.get("doc_id") != key:
        report.problem(f"{where}: json doc_id {meta.get('doc_id')!r} differs from the member key")
    named = {entry.get("image_name") for entry in meta.get("frames", []) + meta.get("image_info", [])}
    absent = {str(name) for name in named if name not in members}
    if absent:
        report.problem(f"{where}: json names images that are not members: {ids(absent)}")
    if facts is None:
        return
    indices = {
        int(ext.partition(".")[0]) for ext in members if ext.endswith(".jpg") and ext.partition(".")[0].isdigit()
    }
    expected = facts.frame_indices.get(str(meta.get("video_id", key)), set())
    if indices != expected:
        missing, extra = sorted(expected - indices), sorted(indices - expected)
        parts = ([f"no image for frame_idx {ids(missing)}"] if missing else []) + (
            [f"images for frame_idx {ids(extra)} that the frames table lacks"] if extra else []
        )
        report.problem(f"{where}: keyframe members do not match the frames table: {'; '.join(parts)}")


def check_mmc4_sample(key: str, members: dict[str, bytes], where: str, report: ValidationReport) -> None:
    document = _json_member(members, where, report)
    if document is None:
        return
    texts = document.get("text_list")
    infos = document.get("image_info")
    if not isinstance(texts, list) or not isinstance(infos, list):
        report.problem(f"{where}: json lacks text_list or image_info lists")
        return
    for position, info in enumerate(infos):
        label = f"{where}: image_info[{position}]"
        index = info.get("matched_text_index")
        if not isinstance(index, int) or not 0 <= index < len(texts):
            report.problem(f"{label} matched_text_index {index!r} is not a sentence index (0..{len(texts) - 1})")
        encoded = info.get("image_base64")
        if not isinstance(encoded, str) or not encoded:
            report.problem(f"{label} has no image_base64")
            continue
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            report.problem(f"{label} image_base64 is not base64: {exc}")
            continue
        reason = decode_problem(data)
        report.add("images_decoded")
        if reason:
            report.problem(f"{label} image_base64 does not decode as an image: {reason}")
    matrix = document.get("similarity_matrix")
    if (
        not isinstance(matrix, list)
        or len(matrix) != len(infos)
        or any(not isinstance(row, list) or len(row) != len(texts) for row in matrix)
    ):
        report.problem(f"{where}: similarity_matrix is not {len(infos)} images x {len(texts)} sentences")


CLIP_SPAN = re.compile(r"^\d+:\d\d:\d\d - \d+:\d\d:\d\d$")


def check_cosmo_sample(key: str, members: dict[str, bytes], where: str, report: ValidationReport) -> None:
    """COSMO's loader reads `json["clips"]`, itself a JSON string of [{clip: "H:MM:SS - H:MM:SS", caption}],
    and the mp4: every frame it may take for a clip must be one of that clip's own (check_cosmo_timing)."""
    meta = _json_member(members, where, report)
    clips = None
    if meta is not None:
        try:
            clips = json.loads(meta.get("clips", ""))
        except (TypeError, ValueError):
            clips = None
        if (
            not isinstance(clips, list)
            or not clips
            or not all(
                isinstance(c, dict) and CLIP_SPAN.match(str(c.get("clip", ""))) and isinstance(c.get("caption"), str)
                for c in clips
            )
        ):
            report.problem(f'{where}: json "clips" is not a JSON list of {{"clip": "H:MM:SS - H:MM:SS", "caption"}}')
            clips = None
    if "mp4" not in members:
        report.problem(f"{where}: no .mp4 member")
        return
    try:
        with av.open(io.BytesIO(members["mp4"])) as container:
            if not container.streams.video:
                report.problem(f"{where}.mp4 has no video stream")
                return
            stream = container.streams.video[0]
            fps = float(stream.average_rate or 0)
            packets = [
                (p.pts * p.time_base, p.duration * p.time_base) for p in container.demux(stream) if p.pts is not None
            ]
    except av.FFmpegError as exc:
        report.problem(f"{where}.mp4 does not open: {exc}")
        return
    if clips is not None:
        check_cosmo_timing(meta, clips, fps, sorted(packets), where, report)


def check_cosmo_timing(
    meta: dict[str, Any],
    clips: list[dict],
    fps: float,
    frames: list[tuple[Any, Any]],
    where: str,
    report: ValidationReport,
) -> None:
    """COSMO finds a clip's frames by arithmetic (cosmo_frames_read), assuming a constant frame rate: the
    mp4 must have one, and each frame it may take, at source time pts x video_speed, must lie inside
    the clip (source_clips), or repeat the video's last frame for its last clip."""
    durations = {duration for _, duration in frames}
    starts = [start for start, _ in frames]
    steps = {b - a for a, b in zip(starts, starts[1:])}
    if not fps or len(durations | steps) > 1:
        shown = ", ".join(f"{float(d):.4g}" for d in sorted(durations | steps)[:4])
        report.problem(f"{where}.mp4 has no constant frame rate (frame durations and steps {shown} s)")
        return
    sources = meta.get("source_clips")
    speed = meta.get("video_speed", COSMO_VIDEO_SPEED)
    if not isinstance(sources, list) or len(sources) != len(clips):
        report.problem(f"{where}: json source_clips does not list the clip behind each of its {len(clips)} clips")
        return
    end_s = meta.get("video_end_s")
    for clip, source in zip(clips, sources):
        start, end = (
            sum(int(part) * 60**power for power, part in enumerate(reversed(t.split(":"))))
            for t in clip["clip"].split(" - ")
        )
        outside = []
        for index in cosmo_frames_read(start, end, fps, len(frames)):
            t_s = float(starts[index] * speed)
            repeat_of_last = end_s is not None and source["end_s"] >= end_s and t_s >= end_s
            if not source["start_s"] <= t_s < source["end_s"] and not repeat_of_last:
                outside.append(t_s)
        if outside:
            report.problem(
                f"{where}: COSMO's loader may take frames at {', '.join(f'{t:.2f}' for t in outside[:3])} s for clip "
                f'"{clip["clip"]}", outside its clip [{source["start_s"]}, {source["end_s"]}) s'
            )
        report.add("cosmo_clips_checked")


def _read_sizes(shard_dir: Path, name: str, report: ValidationReport) -> dict[str, int] | None:
    where = f"shards/{shard_dir.name}/{name}"
    try:
        sizes = json.loads((shard_dir / name).read_text(encoding="utf-8"))
    except FileNotFoundError:
        report.problem(f"{where} is missing")
        return None
    except (OSError, ValueError) as exc:
        report.problem(f"{where} cannot be read: {exc}")
        return None
    if not isinstance(sizes, dict) or not all(isinstance(v, int) for v in sizes.values()):
        report.problem(f"{where} is not an object of tar name -> sample count")
        return None
    return sizes


def check_sizes(shard_dir: Path, actual: dict[str, int], report: ValidationReport) -> None:
    """Each manifest (sizes.json, and num_samples.json that COSMO reads) names exactly the tars there
    with their true sample counts."""
    fmt = shard_dir.name
    for manifest in SIZES_FILES:
        sizes = _read_sizes(shard_dir, manifest, report)
        if sizes is None:
            continue
        for name in sorted(set(sizes) - set(actual)):
            report.problem(f"shards/{fmt}/{manifest} lists {name}, which does not exist")
        for name in sorted(set(actual) - set(sizes)):
            report.problem(f"shards/{fmt}/{name} is not listed in {manifest}")
        for name in sorted(set(sizes) & set(actual)):
            if sizes[name] != actual[name]:
                report.problem(
                    f"shards/{fmt}/{manifest} says {name} holds {sizes[name]} samples; it holds {actual[name]}"
                )


def check_format(out: Path, fmt: str, facts: TableFacts | None, report: ValidationReport) -> Counter[str]:
    """One format's tars and sizes.json; returns how many samples each key has in the format."""
    shard_dir = out / "shards" / fmt
    keys: Counter[str] = Counter()
    if not shard_dir.is_dir():
        report.problem(f"shards/{fmt} is missing although the build was configured to write {fmt}")
        return keys
    actual: dict[str, int] = {}
    for tar_path in sorted(shard_dir.glob("*.tar")):
        count = 0
        try:
            for key, members in iter_samples(tar_path):
                count += 1
                keys[key] += 1
                where = f"shards/{fmt}/{tar_path.name}: {key}"
                for ext, data in members.items():
                    if ext.rpartition(".")[2].lower() in IMAGE_EXTENSIONS:
                        reason = decode_problem(data)
                        report.add("images_decoded")
                        if reason:
                            report.problem(f"{where}.{ext} does not decode as an image: {reason}")
                if fmt == "native":
                    check_native_sample(key, members, where, facts, report)
                elif fmt == "mmc4":
                    check_mmc4_sample(key, members, where, report)
                elif fmt == "cosmo":
                    check_cosmo_sample(key, members, where, report)
        except (tarfile.TarError, OSError, EOFError) as exc:
            report.problem(f"shards/{fmt}/{tar_path.name} is not a readable tar: {exc}")
        actual[tar_path.name] = count
    report.counts[f"samples.{fmt}"] = sum(actual.values())
    check_sizes(shard_dir, actual, report)
    duplicated = [key for key, n in keys.items() if n > 1]
    if duplicated:
        verb = "appears" if len(duplicated) == 1 else "appear"
        report.problem(
            f"{fmt}: {plural(len(duplicated), 'document')} {verb} in more than one sample: {ids(duplicated)}"
        )
    if facts is not None:
        missing = facts.expected.get(fmt, facts.doc_ids) - set(keys)
        extra = set(keys) - facts.doc_ids
        if missing:
            report.problem(f"{fmt}: {plural(len(missing), 'document')} missing from the shards: {ids(missing)}")
        if extra:
            report.problem(f"{fmt}: {plural(len(extra), 'sample')} with no row in documents: {ids(extra)}")
    return keys
