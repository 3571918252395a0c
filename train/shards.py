"""Shard folders on the command line: `FOLDER` or `name=weight:FOLDER`, and the layout of their tars.

A folder's shards are the tars the writer named for their group (`000042.tar`: never its `.tmp-*`
files); where the build's `_state/groups` markers sit beside the folder (OUT/shards/<layout>/ next to
OUT/_state/groups/), only the tars of marked (finished) groups. A layout is recognised from the members
of the first sample of the folder's first non-empty tar, as the trainers' loaders see them: cosmo has an .mp4 and a .json whose "clips" is a string; mmc4 has only a .json with text_list
and image_info; native has a .json with .{k}.jpg keyframes beside it.
"""

from __future__ import annotations

import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from cosmo_data.storage.corpus_state import finish_pending_rewrite
from cosmo_data.train.config import SourceConfig, TrainError

LAYOUTS = ("cosmo", "mmc4", "native")
# The writer's finished tars (pipeline/writer.py's group_name) and its done markers, relative to OUT.
SHARD_NAME = re.compile(r"^\d{6,}\.tar$")
GROUP_MARKERS = Path("_state") / "groups"


@dataclass(frozen=True)
class ShardSource:
    name: str
    weight: float
    layout: str
    tars: tuple[str, ...]


def parse_source(spec: str) -> SourceConfig:
    """`name=weight:folder` names a weighted part of a mixture; a bare folder has weight 1 and its own name."""
    name, sep, rest = spec.partition("=")
    if sep and ":" in rest and "/" not in name:
        weight_text, _, folder = rest.partition(":")
        try:
            weight = float(weight_text)
        except ValueError as exc:
            raise TrainError(
                f"shard source {spec!r}: weight {weight_text!r} is not a number (name=weight:folder)"
            ) from exc
        if weight <= 0:
            raise TrainError(f"shard source {spec!r}: weight must be positive")
        return SourceConfig(name=name, weight=weight, folder=Path(folder))
    folder = Path(spec)
    return SourceConfig(name=folder.name or str(folder), weight=1.0, folder=folder)


def _first_sample_members(tar_path: Path) -> dict[str, bytes]:
    """The members of the first sample (webdataset: members sharing the prefix before the first dot)."""
    members: dict[str, bytes] = {}
    key = None
    with tarfile.open(tar_path) as archive:
        for info in archive:
            if not info.isfile():
                continue
            base = info.name.rsplit("/", 1)[-1]
            prefix, _, extension = base.partition(".")
            if key is None:
                key = prefix
            elif prefix != key:
                break
            if extension == "json":
                members[extension] = archive.extractfile(info).read()
            else:
                members[extension] = b""
    return members


def detect_layout(tar_path: Path) -> str | None:
    """The layout of a tar's first sample, or None for a tar without samples (a group with no ok video)."""
    try:
        members = _first_sample_members(tar_path)
    except (OSError, tarfile.TarError) as exc:
        raise TrainError(f"cannot read shard {tar_path}: {exc}") from exc
    if not members:
        return None
    try:
        meta = json.loads(members.get("json") or b"null")
    except ValueError as exc:
        raise TrainError(f"shard {tar_path}: the first sample's json is not valid JSON") from exc
    if not isinstance(meta, dict):
        raise TrainError(f"shard {tar_path}: the first sample has no json member; not a cosmo-data shard")
    if "mp4" in members and isinstance(meta.get("clips"), str):
        return "cosmo"
    if any(extension.endswith("jpg") for extension in members):
        return "native"
    if "text_list" in meta and "image_info" in meta:
        return "mmc4"
    raise TrainError(f"shard {tar_path}: members {sorted(members)} match none of the layouts {', '.join(LAYOUTS)}")


def shard_tars(folder: Path) -> list[Path]:
    """The finished shards of a folder: writer-named tars, of marked groups where markers exist."""
    markers = folder.parent.parent / GROUP_MARKERS
    if markers.is_dir():
        # A filter or dedup killed while moving its rewrite into place leaves some groups new and some old.
        finish_pending_rewrite(folder.parent.parent)
    tars = sorted(path for path in folder.iterdir() if SHARD_NAME.match(path.name) and path.is_file())
    if markers.is_dir():
        done = {marker.stem for marker in markers.glob("*.json")}
        tars = [tar for tar in tars if tar.stem in done]
    return tars


def resolve_source(source: SourceConfig) -> ShardSource:
    folder = source.folder
    if not folder.is_dir():
        raise TrainError(f"shard folder {folder} does not exist")
    tars = shard_tars(folder)
    if not tars:
        hint = next(
            (
                f" (its {child.name}/ has some)"
                for child in sorted(folder.iterdir())
                if child.is_dir() and any(child.glob("*.tar"))
            ),
            "",
        )
        raise TrainError(f"shard folder {folder} holds no .tar of a finished group (NNNNNN.tar){hint}")
    layout = next((found for tar in tars if (found := detect_layout(tar))), None)
    if layout is None:
        raise TrainError(f"shard folder {folder}: its {len(tars)} shards hold no sample")
    return ShardSource(source.name, source.weight, layout, tuple(str(tar) for tar in tars))


def resolve_sources(specs: list[str], configured: list[SourceConfig]) -> list[ShardSource]:
    sources = [parse_source(spec) for spec in specs] if specs else configured
    if not sources:
        raise TrainError("no training shards: name shard folders on the command line or in data.sources")
    names = [source.name for source in sources]
    if len(set(names)) != len(names):
        raise TrainError(f"shard sources need distinct names, got {names} (use name=weight:folder)")
    return [resolve_source(source) for source in sources]
