"""The corpus's dataset card: README.md at its root with the Hugging Face datasets YAML header.

The header names each Parquet table as a config (documents the default) with its features, so that
`datasets.load_dataset(CORPUS)` and the Hub's viewer read it without a loading script. The shard
folders are not configs: `datasets` infers one builder for all of a dataset's configs (Parquet here),
and the native layout's samples hold a varying number of images, which its webdataset reader refuses;
the card says how to load the mmc4 and cosmo shards with the webdataset builder instead. The body gives
the counts, the funnel (what each status and filter removed) and what is known of the sources' licences.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import yaml

from cosmo_data.corpus.query import connect
from cosmo_data.corpus.stats import compute_stats, format_funnel
from cosmo_data.schemas.tables import TABLES
from cosmo_data.storage import AnyPath, location, write_atomic

CARD = "README.md"
DEFAULT_CONFIG = "documents"
READ_BATCH = 1000
# The layouts whose samples always have the same members (webdataset's reader needs that).
WEBDATASET_LAYOUTS = ("mmc4", "cosmo")
LICENCES = {
    "youtube": "the uploader's: YouTube's standard licence unless the video is marked Creative Commons "
    "(CC BY); check each video before redistributing",
    "url": "unknown: whatever the hosting site grants",
    "local": "unknown: the builder's own files",
}


def _dtype(arrow: pa.DataType) -> str:
    names = {"double": "float64", "float": "float32", "halffloat": "float16", "bool": "bool"}
    return names.get(str(arrow), str(arrow))


def feature(arrow: pa.DataType) -> dict[str, Any]:
    """A field's type as the datasets YAML writes features: dtype, list or struct (a map is read as
    a list of key/value structs, as Arrow stores it)."""
    if pa.types.is_map(arrow):
        return {"list": [{"name": "key", **feature(arrow.key_type)}, {"name": "value", **feature(arrow.item_type)}]}
    if pa.types.is_list(arrow):
        inner = feature(arrow.value_type)
        return {"list": inner.get("dtype", inner)}
    if pa.types.is_struct(arrow):
        return {"struct": [{"name": field.name, **feature(field.type)} for field in arrow]}
    return {"dtype": _dtype(arrow)}


def _struct_fields(arrow: pa.DataType) -> list[dict[str, Any]]:
    return [{"name": field.name, **feature(field.type)} for field in arrow]


def _readable(schema: pa.Schema) -> list[pa.Field]:
    """The fields datasets can read: it has no map type (videos.timings, videos.counters) and cannot
    cast one to a list of structs, so those stay for DuckDB and pyarrow."""
    return [f for f in schema if not pa.types.is_map(f.type)]


def header(corpus: AnyPath, rows: dict[str, int]) -> dict[str, Any]:
    # An empty table is no config: datasets refuses a split without data.
    tables = [name for name in TABLES if rows.get(name)]
    configs = []
    for name in tables:
        config: dict[str, Any] = {"config_name": name}
        if name == DEFAULT_CONFIG:
            config["default"] = True
        config["data_files"] = [{"split": "train", "path": f"{name}/*.parquet"}]
        # A fixed batch: datasets otherwise reads a part by its first row group's size, which is 0 for
        # a group whose videos all failed.
        config["batch_size"] = READ_BATCH
        if len(_readable(TABLES[name])) < len(TABLES[name]):
            config["columns"] = [f.name for f in _readable(TABLES[name])]
        configs.append(config)
    info = [
        {"config_name": name, "features": [{"name": f.name, **feature(f.type)} for f in _readable(TABLES[name])]}
        for name in tables
    ]
    return {
        "pretty_name": f"{corpus.name} (cosmo-data)",
        "license": "other",
        "tags": ["video", "interleaved", "video-text", "webdataset"],
        "configs": configs,
        "dataset_info": info,
    }


def _counts(corpus: AnyPath) -> tuple[dict[str, int], dict[str, int]]:
    """Rows per table (from the Parquet footers) and ok videos per kind of source."""
    connection = connect(corpus)
    try:
        rows = {name: connection.execute(f"SELECT count(*) FROM {name}").fetchone()[0] for name in TABLES}
        kinds = connection.execute(
            "SELECT CASE WHEN source LIKE 'http%youtu%' OR regexp_matches(source, '^[A-Za-z0-9_-]{11}$') "
            "THEN 'youtube' WHEN source LIKE 'http%' THEN 'url' ELSE 'local' END AS kind, count(*) "
            "FROM videos WHERE status = 'ok' GROUP BY kind ORDER BY kind"
        ).fetchall()
    finally:
        connection.close()
    return rows, dict(kinds)


def _table(rows: list[tuple[str, Any]], head: tuple[str, str]) -> list[str]:
    return [f"| {head[0]} | {head[1]} |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows), ""]


def body(corpus: AnyPath, stats: dict[str, Any], kinds: dict[str, int]) -> str:
    layouts = (
        sorted(p.name for p in (corpus / "shards").iterdir() if p.is_dir()) if (corpus / "shards").is_dir() else []
    )
    lines = [
        f"# {corpus.name}",
        "",
        "Interleaved video-text documents built by cosmo-data: keyframes placed among the sentences of each "
        "video's transcript and captions, with the Parquet tables they came from.",
        "",
        "```python",
        "from datasets import load_dataset",
        'documents = load_dataset("PATH")  # the documents table; name another config for another table',
        'videos = load_dataset("PATH", "videos")',
        "```",
        "",
        "## Counts",
        "",
        *_table(
            [
                ("videos (rows)", stats["videos_total"]),
                ("videos ok", stats["videos_ok"]),
                ("hours of video (ok)", round(stats["hours_of_video"], 3)),
                ("clips (of ok videos)", stats["clips"]),
                ("keyframes (of ok videos)", stats["keyframes"]),
                ("documents (rows, whatever their status)", stats["samples"]),
                ("images in documents", stats["images"]),
            ],
            ("what", "count"),
        ),
        "## Funnel",
        "",
        "Every video keeps its row; `videos.status` says why one is not in the shards.",
        "",
        *_table(sorted(stats["failures"].items()), ("status", "videos")),
        "Items filters dropped inside kept videos (`videos.counters`):",
        "",
        *_table(sorted(stats["dropped"].items()), ("counter", "total")),
    ]
    if stats.get("funnel"):
        lines += ["The curation rules in order, as `cosmo-data stats` shows them:", "", "```"]
        lines += [*format_funnel(stats["funnel"]), "```", ""]
    lines += ["## Shards", ""]
    for layout in layouts:
        if layout in WEBDATASET_LAYOUTS:
            load = f'`load_dataset("webdataset", data_files={{"train": "PATH/shards/{layout}/*.tar"}})`'
        else:
            load = "a webdataset reader (its samples hold one .jpg per image, so their members vary)"
        sizes = corpus / "shards" / layout / "sizes.json"
        samples = sum(json.loads(sizes.read_text()).values()) if sizes.exists() else 0
        lines.append(f"- `shards/{layout}/`: {samples} samples; {load}")
    lines += ["", "## Sources and licences", ""]
    lines += [f"- {kind}: {n} videos; licence {LICENCES[kind]}" for kind, n in kinds.items()] or ["- no video ok"]
    return "\n".join(lines) + "\n"


def write_card(corpus: AnyPath | str) -> AnyPath | None:
    """Write (or rewrite) the corpus's README.md from its tables; returns its path, or None where no
    table is written yet (nothing to describe)."""
    corpus = location(corpus)
    if not (corpus / "videos").is_dir():
        return None
    stats = compute_stats(corpus)
    rows, kinds = _counts(corpus)
    text = "---\n" + yaml.safe_dump(header(corpus, rows), sort_keys=False, width=1000) + "---\n\n"
    text += body(corpus, stats, kinds)
    path = corpus / CARD
    write_atomic(path, text.encode("utf-8"), ".tmp-")
    return path
