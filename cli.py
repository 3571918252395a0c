"""The `cosmo-data` command line. Thin: parse options, call the library, map domain errors to exit codes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
import yaml

from cosmo_data.schemas.config import BuildConfig, ConfigError, load_config, load_yaml

app = typer.Typer(
    add_completion=False,
    rich_markup_mode=None,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Build interleaved video-text pretraining corpora from raw videos.",
)

PACKAGE_DIR = Path(__file__).resolve().parent
TINY_CONFIG = PACKAGE_DIR / "configs" / "tiny.yaml"

USAGE_EXIT = 2


def fail(message: str, code: int = USAGE_EXIT) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def parse_overrides(pairs: list[str]) -> dict[str, object]:
    """--set key=value pairs; values are YAML where only true/false are booleans (asr.language=no is
    Norwegian), null is null, and numbers, lists and mappings are as in YAML."""
    overrides: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value (e.g. asr.model=small), got {pair!r}")
        try:
            overrides[key.strip()] = load_yaml(value)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"--set {key.strip()}: {value!r} is not a YAML value ({problem})") from None
    return overrides


@app.command()
def build(
    source: Annotated[
        list[str],
        typer.Option(
            "--source",
            "-s",
            metavar="SOURCE",
            help="ids/URLs text file, CSV/Parquet, video file or folder, or s3://bucket/key; repeatable",
        ),
    ],
    out: Annotated[
        str,
        typer.Option(
            "--out", "-o", metavar="DIR", help="output folder or s3://bucket/prefix (resumes a build already there)"
        ),
    ] = "corpus",
    config: Annotated[Optional[Path], typer.Option("--config", "-c", metavar="FILE", help="YAML config")] = None,
    ray_address: Annotated[
        Optional[str],
        typer.Option(
            "--ray-address",
            envvar="RAY_ADDRESS",
            metavar="ADDRESS",
            help="join a Ray cluster ('auto' or host:port); without it the build starts a private Ray",
        ),
    ] = None,
    seed: Annotated[Optional[int], typer.Option(metavar="N", help="seed recorded with the build")] = None,
    set_: Annotated[
        Optional[list[str]],
        typer.Option("--set", metavar="KEY=VALUE", help="override a config value, e.g. --set asr.model=small"),
    ] = None,
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed",
            metavar="",
            help="rebuild the finished groups holding videos that failed for a passing reason "
            "(disk_full, rate_limited, deadline_exceeded, storage_failed; --retry-status picks others)",
        ),
    ] = False,
    retry_status: Annotated[
        Optional[list[str]],
        typer.Option(
            "--retry-status",
            metavar="STATUS",
            help="with --retry-failed (implied): retry only videos of these statuses; repeatable or comma-separated",
        ),
    ] = None,
    exclude_ids: Annotated[
        Optional[str],
        typer.Option(
            "--exclude-ids",
            metavar="FILE",
            help="source ids to keep out (an evaluation set): YouTube ids, URLs or paths, one a line, or a "
            "CSV/Parquet with a video_id or url column; their rows get status 'excluded'",
        ),
    ] = None,
) -> None:
    """Download, cut, transcribe, caption, score and interleave videos into a corpus under --out."""
    from cosmo_data.corpus.query import QueryError
    from cosmo_data.corpus.rewrite import RewriteError
    from cosmo_data.pipeline.build import BuildError
    from cosmo_data.pipeline.ray_runner import RayConnectionError
    from cosmo_data.pipeline.sources import SourceError
    from cosmo_data.storage import StorageError, location

    try:
        overrides = parse_overrides(set_ or [])
        overrides |= {k: v for k, v in (("ray_address", ray_address), ("seed", seed)) if v is not None}
        settings = load_config(config, overrides)
        retry = {s.strip() for given in retry_status or [] for s in given.split(",") if s.strip()}
        out = location(out)
        retry_statuses = retry if retry_failed or retry else None
        result = _build_corpus(source, out, settings, retry_failed=retry_statuses, exclude_ids=exclude_ids)
    except (ConfigError, SourceError, BuildError, RayConnectionError, StorageError, RewriteError, QueryError) as exc:
        raise fail(str(exc)) from None
    failures = ", ".join(f"{k} {v}" for k, v in sorted(result.failures.items())) or "none"
    if result.retryable:
        failures += f" ({sum(result.retryable.values())} may pass on a retry: rerun with --retry-failed)"
    reopened = f", {result.groups_reopened} reopened to retry" if result.groups_reopened else ""
    for line in result.curation_reapplied:
        typer.echo(f"applied again to the groups written now: {line}")
    typer.echo(
        f"\nbuilt {result.ok}/{result.sources} videos in {result.wall_s:.1f}s "
        f"({result.groups_written} groups written, {result.groups_resumed} resumed{reopened}); failures: {failures}\n"
        f"corpus: {out.resolve()}\n"
        f"  tables: {out}/<videos|clips|frames|transcripts|documents>/*.parquet\n"
        f"  shards: {out}/shards/<{'|'.join(settings.output.formats)}>/*.tar\n"
        f"next: cosmo-data stats {out}   cosmo-data preview {out} --out preview.html   cosmo-data validate {out}"
    )


@app.command()
def stats(
    out: Annotated[str, typer.Argument(metavar="CORPUS", help="a built corpus (folder or s3://bucket/prefix)")],
    as_json: Annotated[bool, typer.Option("--json", metavar="", help="print one JSON object")] = False,
) -> None:
    """Dataset statistics (DuckDB over the Parquet tables)."""
    from cosmo_data.corpus.query import QueryError
    from cosmo_data.corpus.stats import compute_stats, format_stats

    out = _require_corpus(out)
    try:
        numbers = compute_stats(out)
    except QueryError as exc:
        raise fail(str(exc), 1) from None
    typer.echo(json.dumps(numbers, indent=2, sort_keys=True) if as_json else format_stats(numbers))


@app.command()
def query(
    out: Annotated[str, typer.Argument(metavar="CORPUS", help="a built corpus (folder or s3://bucket/prefix)")],
    sql: Annotated[
        str, typer.Argument(metavar="SQL", help="SQL over the views videos, clips, frames, transcripts, documents")
    ],
    fmt: Annotated[str, typer.Option("--format", "-f", metavar="table|csv|json", help="output format")] = "table",
) -> None:
    """Run SQL over the corpus tables."""
    from cosmo_data.corpus.query import QueryError, run_query

    out = _require_corpus(out)
    if fmt not in ("table", "csv", "json"):
        raise fail(f"--format must be table, csv or json, not {fmt!r}") from None
    try:
        typer.echo(run_query(out, sql, fmt))
    except QueryError as exc:
        raise fail(str(exc), 1) from None


@app.command()
def preview(
    out: Annotated[str, typer.Argument(metavar="CORPUS", help="a built corpus (folder or s3://bucket/prefix)")],
    html: Annotated[Path, typer.Option("--out", "-o", metavar="FILE", help="HTML file to write")] = Path(
        "preview.html"
    ),
    n: Annotated[int, typer.Option("--n", metavar="N", help="documents to show")] = 20,
    where: Annotated[
        Optional[str], typer.Option(metavar="SQL", help="SQL condition over videos, e.g. \"language = 'en'\"")
    ] = None,
) -> None:
    """Write one self-contained HTML page showing documents with their keyframes inline."""
    from cosmo_data.corpus.preview import write_preview
    from cosmo_data.corpus.query import QueryError

    out = _require_corpus(out)
    try:
        result = write_preview(out, html, n=n, where=where)
    except QueryError as exc:
        raise fail(str(exc), 1) from None
    typer.echo(f"wrote {html} ({result})")


@app.command()
def validate(
    out: Annotated[str, typer.Argument(metavar="CORPUS", help="a built corpus (folder or s3://bucket/prefix)")],
) -> None:
    """Check shards, sizes.json and tables against the schemas and each other."""
    from cosmo_data.corpus.validate import validate as run_validate
    from cosmo_data.corpus.validation_report import format_report

    out = _require_corpus(out)
    report = run_validate(out)
    typer.echo(format_report(report))
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def dedup(
    out: Annotated[str, typer.Argument(metavar="CORPUS", help="a built corpus (folder or s3://bucket/prefix)")],
    threshold: Annotated[
        float,
        typer.Option(
            min=-1.0,
            max=1.0,
            metavar="COSINE",
            help="cosine similarity of keyframe embeddings at which a copy is a duplicate",
        ),
    ] = 0.95,
    clusters: Annotated[
        Optional[int], typer.Option(min=1, metavar="N", help="k-means clusters (default: the square root of the items)")
    ] = None,
) -> None:
    """Mark exact and near-duplicate videos and clips (duplicate_of names the copy kept); their documents
    leave the shards."""
    from cosmo_data.corpus.card import write_card
    from cosmo_data.corpus.dedup import dedup_corpus
    from cosmo_data.corpus.query import QueryError
    from cosmo_data.corpus.rewrite import RewriteError
    from cosmo_data.storage import StorageError

    corpus = _require_corpus(out)
    try:
        summary = dedup_corpus(corpus, threshold, clusters)
        write_card(corpus)
    except (RewriteError, StorageError, QueryError) as exc:
        raise fail(str(exc)) from None
    removed = summary.rewrite.samples_removed if summary.rewrite else {}
    typer.echo(
        f"duplicates: {summary.exact_videos} videos exact (same file), {summary.near_videos} videos and "
        f"{summary.near_clips} clips near (cosine >= {threshold:g}); samples removed: "
        + (", ".join(f"{fmt} {n}" for fmt, n in sorted(removed.items())) or "none")
    )


@app.command("filter")
def filter_(
    out: Annotated[str, typer.Argument(metavar="CORPUS", help="a built corpus (folder or s3://bucket/prefix)")],
    config: Annotated[
        Path, typer.Option("--config", "-c", metavar="FILE", help="YAML config whose curation: rules to apply")
    ],
    set_: Annotated[
        Optional[list[str]],
        typer.Option("--set", metavar="KEY=VALUE", help="override a rule, e.g. --set curation.clip.min_brightness=20"),
    ] = None,
) -> None:
    """Apply curation rules again from the stored signals (no decoding, no model) and rewrite tables and
    shards; the old ones stay intact until the new are complete."""
    from cosmo_data.corpus.card import write_card
    from cosmo_data.corpus.filter import filter_corpus
    from cosmo_data.corpus.rewrite import RewriteError
    from cosmo_data.corpus.stats import FUNNEL_TABLES
    from cosmo_data.storage import StorageError

    corpus = _require_corpus(out)
    try:
        curation = load_config(config, parse_overrides(set_ or [])).curation
        summary = filter_corpus(corpus, curation)
        write_card(corpus)  # its counts and funnel changed
    except (ConfigError, RewriteError, StorageError) as exc:
        raise fail(str(exc)) from None
    for rule, dropped in summary.dropped.items():
        typer.echo(f"{rule}: " + ", ".join(f"{dropped.get(t, 0)} {t}" for t in FUNNEL_TABLES))
    removed = summary.rewrite.samples_removed if summary.rewrite else {}
    typer.echo(
        f"filtered now: {sum(d.get('videos', 0) for d in summary.dropped.values())} videos; samples removed: "
        + (", ".join(f"{fmt} {n}" for fmt, n in sorted(removed.items()) if n) or "none")
    )


@app.command()
def narrate(
    out: Annotated[str, typer.Argument(help="a built corpus (folder or s3://bucket/prefix)")],
    config: Annotated[
        Optional[Path],
        typer.Option(
            "--config", "-c", metavar="FILE", help="YAML config whose narration: to use (default: the build's)"
        ),
    ] = None,
) -> None:
    """Narrate every clip again with the configured LLM and prompt, from the stored captions, speech and
    keyframe embeddings (no video decoded, no image model run), and rewrite tables and shards; the old
    ones stay intact until the new are complete."""
    from cosmo_data.corpus.card import write_card
    from cosmo_data.corpus.narrate import NarrateError, narrate_corpus
    from cosmo_data.corpus.rewrite import RewriteError
    from cosmo_data.models import ModelError
    from cosmo_data.storage import StorageError

    corpus = _require_corpus(out)
    try:
        summary = narrate_corpus(corpus, load_config(config) if config else None)
        write_card(corpus)
    except (ConfigError, NarrateError, RewriteError, ModelError, StorageError) as exc:
        raise fail(str(exc)) from None
    statuses = ", ".join(f"{status} {n}" for status, n in sorted(summary.statuses.items())) or "none"
    typer.echo(f"narrated {summary.documents} documents; clips: {statuses}; {summary.output_tokens} tokens written")


@app.command()
def models(
    config: Annotated[
        Optional[Path], typer.Option("--config", "-c", metavar="FILE", help="YAML config naming the models")
    ] = None,
) -> None:
    """Download the configured models' real weights ahead of time (for clusters without internet)."""
    from cosmo_data.models import ModelError, download_models
    from cosmo_data.models.predictors import fetch_predictors

    try:
        build_config = load_config(config)
        fetched = download_models(build_config)
        clip = build_config.clip_score
        fetched += fetch_predictors(clip.model, clip.pretrained, clip.aesthetic_model, clip.nsfw_model)
    except (ConfigError, ModelError) as exc:
        raise fail(str(exc), 1) from None
    for line in fetched:
        typer.echo(line)


@app.command()
def train(
    shards: Annotated[
        list[str],
        typer.Argument(
            metavar="SHARDS...", help="folders of .tar shards (any layout), or name=weight:folder for a mixture"
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="run folder (resumes a run already there)")],
    config: Annotated[
        Optional[Path], typer.Option("--config", "-c", metavar="FILE", help="YAML training config")
    ] = None,
    steps: Annotated[Optional[int], typer.Option(metavar="N", help="total optimizer steps of the run")] = None,
    nproc: Annotated[
        int, typer.Option(metavar="N", help="processes through torch.distributed (gloo on CPU, nccl on GPU)")
    ] = 1,
    set_: Annotated[
        Optional[list[str]],
        typer.Option("--set", metavar="KEY=VALUE", help="override a config value, e.g. --set optim.lr=1e-4"),
    ] = None,
) -> None:
    """Pretrain the bundled COSMO-style model on the shards; metrics in OUT/metrics.jsonl."""
    from cosmo_data.train.config import TrainError
    from cosmo_data.train.launch import run_cli

    try:
        status = run_cli(shards, out, config, steps, nproc, parse_overrides(set_ or []))
    except TrainError as exc:
        raise fail(str(exc)) from None
    raise typer.Exit(status)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="where the demo corpus goes")] = Path(
        "demo-out"
    ),
) -> None:
    """Generate sample videos and build a corpus from them offline with tiny models, then print its stats."""
    from cosmo_data.corpus.stats import compute_stats, format_stats
    from cosmo_data.pipeline.demo_media import make_demo_videos

    videos = make_demo_videos(out / "_samples")
    source = out / "_samples" / "sources.txt"
    source.write_text("".join(f"{v.resolve()}\n" for v in videos), encoding="utf-8")
    result = _build_corpus([source], out / "corpus", load_config(TINY_CONFIG))
    typer.echo(f"\ndemo corpus: {result.out.resolve()}  ({result.ok}/{result.sources} videos ok)\n")
    typer.echo(format_stats(compute_stats(result.out)))


def _build_corpus(sources: list, out, settings: BuildConfig, **options):
    """The build, then what only the whole corpus can decide: copies of one file finish in any group and
    in any run, so exact duplicates are marked after the last group; then the dataset card."""
    from cosmo_data.corpus.card import write_card
    from cosmo_data.corpus.dedup import mark_exact_duplicates
    from cosmo_data.corpus.reapply import reapply_curation
    from cosmo_data.pipeline.build import build as run_build
    from cosmo_data.storage import location
    from cosmo_data.storage.corpus_state import corpus_lock

    # One lock over the build and its closing passes: no filter or dedup rewrites the corpus meanwhile.
    with corpus_lock(location(out), "build"):
        result = run_build(sources, out, settings, **options)
        if result.groups_written:  # written under the build's rules: filter/dedup run since apply again
            result.curation_reapplied = reapply_curation(result.out)
        exact = mark_exact_duplicates(result.out)
        if exact.exact_videos or result.curation_reapplied:
            totals = json.loads((result.out / "build.json").read_text())  # the rewrites' counts
            result.ok, result.failures = totals["ok"], totals["failures"]
        write_card(result.out)
    return result


def _require_corpus(out: str):
    """The corpus at out (a folder or an object storage prefix), or a one-line error (exit code 2)."""
    from cosmo_data.storage import StorageError, location

    corpus = location(out)
    try:
        found = (corpus / "videos").is_dir()
    except StorageError as exc:
        raise fail(str(exc)) from None
    if not found:
        raise fail(f"{out} is not a built corpus (no videos/ table); run cosmo-data build first") from None
    return corpus


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
