"""One self-contained HTML page showing documents of a build the way a reader meets them.

Sentences run in time order; each kept keyframe stands just before the sentence it was matched to
(MMC4's reading order), with its time and matched similarity. Keyframes come from the native shards
and are inlined as data: URIs, styles are inline, and a Content-Security-Policy forbids everything
else, so the page makes no request. Every string taken from the corpus is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import tarfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from cosmo_data.corpus.query import QueryError, connect, parquet_scan, table_files
from cosmo_data.storage import location, open_binary

MAX_FAILED_LISTED = 200

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 60rem; padding: 1rem 1.5rem;
       color: #1d1d1f; background: #fafafa; }
h1 { font-size: 1.4rem; margin: .2rem 0; }
.summary { color: #555; margin: 0 0 1rem; }
.doc { background: #fff; border: 1px solid #ddd; border-radius: 8px; padding: .8rem 1rem; margin: 0 0 1.2rem; }
.doc h2 { font-size: 1.05rem; margin: 0; font-family: ui-monospace, monospace; }
.meta { color: #666; font-size: .85rem; margin: .2rem 0 .6rem; overflow-wrap: anywhere; }
.stream { list-style: none; padding: 0; margin: 0; }
.sentence { display: grid; grid-template-columns: 8.5rem 4.2rem 1fr; gap: .5rem; padding: .15rem 0; }
.time { color: #888; font: .8rem ui-monospace, monospace; padding-top: .15rem; }
.badge { font-size: .7rem; border-radius: 3px; padding: .1rem .3rem; height: fit-content; text-align: center; }
.asr .badge { background: #e3efff; color: #1a4f9c; }
.caption .badge { background: #eee6ff; color: #5b2f9e; }
.caption .text { font-style: italic; color: #444; }
figure { margin: .4rem 0 .4rem 13.2rem; }
figure img { display: block; max-width: 240px; border-radius: 4px; }
figcaption { color: #666; font: .8rem ui-monospace, monospace; }
.missing { margin: .4rem 0 .4rem 13.2rem; color: #a00; font-size: .85rem; }
table { border-collapse: collapse; width: 100%; background: #fff; font-size: .85rem; }
th, td { border: 1px solid #ddd; padding: .3rem .5rem; text-align: left; vertical-align: top; }
td pre { margin: 0; white-space: pre-wrap; overflow-wrap: anywhere; }
.status { font-family: ui-monospace, monospace; color: #a00; }
"""

# No scripts, no fetches: images are data: URIs and styles live in the page.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


@dataclass
class PreviewResult:
    path: Path
    documents: int  # documents shown
    images: int  # keyframes shown
    missing_images: int  # keyframes of shown documents not found in the native shards
    failed_listed: int
    failed_total: int  # failed videos matching the condition

    def __str__(self) -> str:
        text = f"{self.documents} documents, {self.images} images, {self.failed_total} failed videos"
        if self.missing_images:
            text += f"; {self.missing_images} keyframes missing from the native shards"
        return text


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def format_time(seconds: float | None) -> str:
    """m:ss.s (h:mm:ss.s past an hour)."""
    if seconds is None:
        return "?"
    minutes, secs = divmod(max(seconds, 0.0), 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{secs:04.1f}" if hours else f"{minutes}:{secs:04.1f}"


def _data_uri(image: bytes) -> str:
    mime = "image/png" if image.startswith(b"\x89PNG") else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(image).decode('ascii')}"


def _rows(connection: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[dict[str, Any]]:
    cursor = connection.execute(sql, params or [])
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def _has_column(connection: duckdb.DuckDBPyConnection, table: str, column: str) -> bool:
    return column in [c[0] for c in connection.execute(f"SELECT * FROM {table} LIMIT 0").description]


def _dropped(connection: duckdb.DuckDBPyConnection, matching: str) -> list[dict[str, Any]]:
    """Clips and keyframes that a curation rule took out of videos matching (corpora built before curation
    have no status column there: nothing to list)."""
    if not _has_column(connection, "clips", "filter_reason"):
        return []
    return _rows(
        connection,
        f"""
        SELECT 'clip' AS item, video_id, clip_idx AS idx, start_s AS t_s, filter_reason FROM clips
        WHERE status = 'filtered' AND video_id IN ({matching})
        UNION ALL
        SELECT 'keyframe', video_id, frame_idx, t_s, filter_reason FROM frames
        WHERE status = 'filtered' AND video_id IN ({matching})
        ORDER BY video_id, t_s, item LIMIT ?
        """,
        [MAX_FAILED_LISTED],
    )


def _select(
    connection: duckdb.DuckDBPyConnection, out: Path, n: int, where: str | None
) -> tuple[list, list, int, list]:
    """Documents to show (with their video's metadata and shard group), failed videos, failed count, and
    the clips and keyframes that rules dropped."""
    matching = f"SELECT video_id FROM videos WHERE ({where})" if where else "SELECT video_id FROM videos"
    documents = _rows(
        connection,
        f"""
        SELECT d.*, v.source, v.language, v.duration_s, v.n_clips, v.source_index
        FROM documents d JOIN videos v USING (video_id)
        WHERE v.status = 'ok' AND d.video_id IN ({matching})
        ORDER BY v.source_index, d.doc_id LIMIT ?
        """,
        [n],
    )
    if documents:
        # The part file a document came from names its group, and so the native tar holding its keyframes.
        scan = parquet_scan(table_files(out, "documents"), filename=True)
        files = dict(
            connection.execute(
                f"SELECT doc_id, filename FROM {scan} WHERE doc_id IN (SELECT unnest(?))",
                [[d["doc_id"] for d in documents]],
            ).fetchall()
        )
        for document in documents:
            document["group"] = Path(files[document["doc_id"]]).stem.removeprefix("part-")
    reason = "filter_reason" if _has_column(connection, "videos", "filter_reason") else "NULL AS filter_reason"
    failed = _rows(
        connection,
        f"""
        SELECT video_id, source, status, error, {reason} FROM videos
        WHERE status <> 'ok' AND video_id IN ({matching}) ORDER BY source_index, video_id LIMIT ?
        """,
        [MAX_FAILED_LISTED],
    )
    failed_total = connection.execute(
        f"SELECT count(*) FROM videos WHERE status <> 'ok' AND video_id IN ({matching})"
    ).fetchone()[0]
    return documents, failed, failed_total, _dropped(connection, matching)


def read_keyframes(out: Path, wanted: dict[str, set[str]]) -> dict[tuple[str, int], bytes]:
    """JPEG bytes of native members `<doc_id>.<k>.jpg` for the wanted {group: {doc_id}}."""
    found: dict[tuple[str, int], bytes] = {}
    for group, doc_ids in wanted.items():
        tar_path = location(out) / "shards" / "native" / f"{group}.tar"
        if not tar_path.is_file():
            continue
        with open_binary(tar_path) as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                index, _, suffix = ext.partition(".")
                if key in doc_ids and suffix == "jpg" and index.isdigit() and member.isfile():
                    found[(key, int(index))] = tar.extractfile(member).read()
    return found


def _sentence_html(text: str, start: float, end: float, source: str) -> str:
    label = "ASR" if source == "asr" else source
    return (
        f'<li class="sentence {_esc(source)}"><span class="time">{format_time(start)}–{format_time(end)}</span>'
        f'<span class="badge">{_esc(label)}</span><span class="text">{_esc(text)}</span></li>'
    )


def _image_html(doc_id: str, info: dict[str, Any], image: bytes | None, n_sentences: int) -> str:
    index = info["matched_text_index"]
    where = f"sentence {index + 1}" if 0 <= index < n_sentences else f"unmatched (index {index})"
    caption = f"keyframe {info['frame_idx']} at {format_time(info['t_s'])} · sim {info['matched_sim']:.3f} → {where}"
    if image is None:
        return f'<li class="missing">{_esc(caption)}: image not found in the native shards</li>'
    return (
        f'<li class="image"><figure><img src="{_data_uri(image)}" alt="{_esc(doc_id)} {_esc(caption)}">'
        f"<figcaption>{_esc(caption)}</figcaption></figure></li>"
    )


def _document_html(
    document: dict[str, Any], images: dict[tuple[str, int], bytes], narration_html: str = ""
) -> tuple[str, int]:
    """One document as an article (its clips' narration table at the end); returns the html and how many of
    its keyframes were found."""
    doc_id = document["doc_id"]
    texts = document["text_list"]
    n = len(texts)
    before: dict[int, list[dict]] = defaultdict(list)
    for info in sorted(document["image_info"], key=lambda i: i["t_s"]):
        index = info["matched_text_index"]
        before[index if 0 <= index < n else n].append(info)

    shown = 0
    items: list[str] = []

    def add_images(index: int) -> None:
        nonlocal shown
        for info in before.get(index, []):
            image = images.get((doc_id, info["frame_idx"]))
            shown += image is not None
            items.append(_image_html(doc_id, info, image, n))

    order = sorted(range(n), key=lambda i: (document["sentence_start_s"][i], i))
    for i in order:
        add_images(i)
        items.append(
            _sentence_html(
                texts[i], document["sentence_start_s"][i], document["sentence_end_s"][i], document["sentence_source"][i]
            )
        )
    add_images(n)
    duration = format_time(document["duration_s"]) if document["duration_s"] is not None else "?"
    meta = (
        f"{document['source']} · language {document['language'] or 'unknown'} · {duration} · "
        f"{document['n_clips']} clips · {n} sentences · {len(document['image_info'])} images · "
        f"{document['n_tokens']} tokens · assignment {document['assignment']}"
    )
    article = (
        f'<article class="doc" id="doc-{_esc(doc_id)}"><h2>{_esc(doc_id)}</h2><p class="meta">{_esc(meta)}</p>'
        f'<ol class="stream">{"".join(items)}</ol>{narration_html}</article>'
    )
    return article, shown


def _failed_html(failed: list[dict[str, Any]], failed_total: int) -> str:
    if not failed_total:
        return "<section><h2>Failed videos</h2><p>None.</p></section>"
    rows = "".join(
        f"<tr><td>{_esc(f['video_id'])}</td><td>{_esc(f['source'])}</td>"
        f'<td class="status">{_esc(f["status"])}</td><td>{_esc(f["filter_reason"] or "")}</td>'
        f"<td><pre>{_esc(f['error'])}</pre></td></tr>"
        for f in failed
    )
    more = f"<p>… and {failed_total - len(failed)} more.</p>" if failed_total > len(failed) else ""
    return (
        f"<section><h2>Failed videos ({failed_total})</h2><table><thead><tr><th>video</th><th>source</th>"
        f"<th>status</th><th>rule</th><th>error</th></tr></thead><tbody>{rows}</tbody></table>{more}</section>"
    )


def _dropped_html(dropped: list[dict[str, Any]]) -> str:
    """What the curation rules took out of videos that may still be in the corpus, with the rule."""
    if not dropped:
        return ""
    rows = "".join(
        f"<tr><td>{_esc(d['video_id'])}</td><td>{_esc(d['item'])} {_esc(d['idx'])}</td>"
        f'<td>{_esc(format_time(d["t_s"]))}</td><td class="status">{_esc(d["filter_reason"])}</td></tr>'
        for d in dropped
    )
    return (
        f"<section><h2>Clips and keyframes dropped by rules ({len(dropped)} listed)</h2><table><thead><tr>"
        f"<th>video</th><th>item</th><th>at</th><th>rule</th></tr></thead><tbody>{rows}</tbody></table></section>"
    )


def _narrations(connection: duckdb.DuckDBPyConnection, video_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Per video, its narrated clips (any outcome) with their evidence: keyframe captions and the speech
    segments overlapping the clip. Empty for corpora built without narration."""
    if not video_ids or not _has_column(connection, "clips", "narration_status"):
        return {}
    rows = _rows(
        connection,
        """
        SELECT c.video_id, c.clip_idx, c.start_s, c.end_s, c.narration_status, c.narration,
            (SELECT list(f.caption ORDER BY f.frame_idx) FROM frames f
             WHERE f.video_id = c.video_id AND f.clip_idx = c.clip_idx AND f.caption IS NOT NULL) AS captions,
            (SELECT list(t.text ORDER BY t.seg_idx) FROM transcripts t
             WHERE t.video_id = c.video_id AND t.end_s > c.start_s AND t.start_s < c.end_s) AS speech
        FROM clips c WHERE c.narration_status IS NOT NULL AND c.video_id IN (SELECT unnest(?))
        ORDER BY c.video_id, c.clip_idx
        """,
        [video_ids],
    )
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        found[row["video_id"]].append(row)
    return found


def _narration_html(clips: list[dict[str, Any]]) -> str:
    """Each clip's narration beside the evidence it was written from, with the outcome of its checks."""
    if not clips:
        return ""
    rows = "".join(
        f"<tr><td>{_esc(c['clip_idx'])}</td><td>{format_time(c['start_s'])}–{format_time(c['end_s'])}</td>"
        f'<td class="status">{_esc(c["narration_status"])}</td><td>{_esc(c["narration"] or "")}</td>'
        f"<td>{'<br>'.join(_esc(t) for t in c['captions'] or [])}</td>"
        f"<td>{'<br>'.join(_esc(t) for t in c['speech'] or [])}</td></tr>"
        for c in clips
    )
    return (
        '<table class="narration"><thead><tr><th>clip</th><th>span</th><th>outcome</th><th>narration</th>'
        f"<th>seen (captions)</th><th>heard (speech)</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def write_preview(out: Path, dest_html: Path, n: int = 20, where: str | None = None) -> PreviewResult:
    """Write the preview page for up to n documents of videos matching `where` (SQL over videos)."""
    out, dest_html = location(out), Path(dest_html)
    connection = connect(out)
    try:
        documents, failed, failed_total, dropped = _select(connection, out, n, where)
        narrations = _narrations(connection, [d["video_id"] for d in documents])
    except duckdb.Error as exc:
        raise QueryError(str(exc)) from exc
    finally:
        connection.close()
    wanted: dict[str, set[str]] = defaultdict(set)
    for document in documents:
        wanted[document["group"]].add(document["doc_id"])
    images = read_keyframes(out, wanted)

    articles: list[str] = []
    shown = 0
    for document in documents:
        article, found = _document_html(document, images, _narration_html(narrations.get(document["video_id"], [])))
        articles.append(article)
        shown += found
    total_images = sum(len(d["image_info"]) for d in documents)
    condition = f" where {where}" if where else ""
    page = (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>cosmo-data preview: {_esc(out.name)}</title><style>{STYLE}</style></head><body>"
        f"<h1>cosmo-data preview</h1>"
        f'<p class="summary">{_esc(str(out))} · {len(documents)} documents shown{_esc(condition)} · '
        f"{failed_total} failed videos</p>"
        f"{''.join(articles) or '<p>No documents match.</p>'}"
        f"{_failed_html(failed, failed_total)}{_dropped_html(dropped)}</body></html>\n"
    )
    dest_html.parent.mkdir(parents=True, exist_ok=True)
    dest_html.write_text(page, encoding="utf-8")
    return PreviewResult(dest_html, len(documents), shown, total_images - shown, len(failed), failed_total)
