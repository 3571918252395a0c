import json
from collections import Counter

import pandas as pd
import pyarrow.parquet as pq
import pytest
from corpus_factory import failed_record, ok_record, realistic_records, write_corpus

from cosmo_data.corpus.stats import compute_stats, format_stats
from cosmo_data.schemas.records import FILTERED


def read_table(out, table) -> pd.DataFrame:
    """The table straight from its Parquet files, without DuckDB."""
    return pd.concat([pq.read_table(p).to_pandas() for p in sorted((out / table).glob("*.parquet"))], ignore_index=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    records = realistic_records(n_ok=7, n_failed=4)
    unknown_language = ok_record("vid_nolang", len(records), 2, clip_s=4.5)
    unknown_language.language = None
    records.append(unknown_language)
    records.append(failed_record("bad_filtered", len(records), "/v/x.mp4", FILTERED, "no keyframe matched a sentence"))
    # A truncated file that kept what decoded, and keyframe pools that fell short (the failed one not counted).
    truncated, short = [r for r in records if r.ok and r is not unknown_language][:2]
    truncated.error = "decoding stopped at 9.68 s of 20.00 s (the header's duration): [mov,mp4] partial file"
    truncated.count("decode_truncated")
    truncated.count("keyframe_shortfall", 3)
    short.count("keyframe_shortfall", 2)
    records[-1].count("keyframe_shortfall", 7)
    return write_corpus(tmp_path_factory.mktemp("stats") / "out", records, videos_per_group=4)


@pytest.fixture(scope="module")
def stats(corpus):
    return compute_stats(corpus.out)


@pytest.fixture(scope="module")
def tables(corpus):
    return {t: read_table(corpus.out, t) for t in ("videos", "clips", "frames", "documents")}


def test_video_counts_and_failures(stats, tables):
    videos = tables["videos"]
    failed = videos[videos.status != "ok"]
    assert stats["videos_total"] == len(videos) == 13
    assert stats["videos_ok"] == (videos.status == "ok").sum() == 8
    assert stats["videos_failed"] == len(failed) == 5
    assert stats["failures"] == dict(Counter(failed.status))
    assert list(stats["failures"])[0] == "download_failed"  # the most frequent first
    ok = videos[videos.status == "ok"]
    assert stats["hours_of_video"] == pytest.approx(ok.duration_s.sum() / 3600)
    assert stats["languages"] == {"en": 6, "es": 1, "unknown": 1}


def test_clip_and_keyframe_numbers(stats, tables):
    ok_ids = set(tables["videos"].query("status == 'ok'").video_id)
    clips = tables["clips"][tables["clips"].video_id.isin(ok_ids)]
    assert stats["clips"] == len(clips)
    assert stats["avg_clips"] == pytest.approx(len(clips) / len(ok_ids))
    assert stats["avg_clip_length_s"] == pytest.approx((clips.end_s - clips.start_s).mean())
    assert stats["keyframes"] == tables["frames"].video_id.isin(ok_ids).sum()


def test_document_numbers(stats, tables):
    documents = tables["documents"]
    n = len(documents)
    assert stats["samples"] == n == 8
    assert stats["avg_document_tokens"] == pytest.approx(documents.n_tokens.mean())
    images = documents.image_info.map(len)
    assert stats["images"] == images.sum()
    assert stats["avg_images_per_document"] == pytest.approx(images.mean())
    assert stats["avg_sentences_per_document"] == pytest.approx(documents.text_list.map(len).mean())
    sources = Counter(s for row in documents.sentence_source for s in row)
    assert stats["avg_sentences_per_document_by_source"] == pytest.approx(
        {"caption": sources["caption"] / n, "asr": sources["asr"] / n}
    )
    sims = [info["matched_sim"] for row in documents.image_info for info in row]
    assert stats["mean_matched_similarity"] == pytest.approx(sum(sims) / len(sims))


def test_time_per_stage_and_dropped_counters(stats, tables):
    per_stage: dict[str, list[float]] = {}
    dropped: Counter = Counter()
    for timings, counters in zip(tables["videos"].timings, tables["videos"].counters):
        for stage, seconds in timings:
            per_stage.setdefault(stage, []).append(seconds)
        for key, n in counters:
            dropped[key] += n
    assert set(stats["stage_seconds"]) == set(per_stage)
    for stage, values in per_stage.items():
        assert stats["stage_seconds"][stage]["total"] == pytest.approx(sum(values))
        assert stats["stage_seconds"][stage]["mean"] == pytest.approx(sum(values) / len(values))
        assert stats["stage_seconds"][stage]["videos"] == len(values)
    assert stats["stage_seconds"]["download"]["videos"] == 12  # failed downloads spent time too
    assert stats["dropped"] == dict(dropped)
    assert sum(dropped.values()) > 0


def test_stats_are_plain_json(stats):
    assert json.loads(json.dumps(stats)) == stats


def test_format_stats_is_an_aligned_report(stats):
    text = format_stats(stats)
    lines = text.splitlines()
    assert lines[0] == "Corpus"
    for heading in ("Failures by status", "Languages (ok videos)", "Time per stage", "Dropped by filters"):
        assert heading in lines
    samples_line = next(line for line in lines if line.strip().startswith("samples (documents)"))
    assert samples_line.split()[-1] == "8"
    assert any(line.split() == ["download_failed", "2"] for line in lines)
    assert any(line.split() == ["filtered", "1"] for line in lines)
    # Values of the corpus block end in one column.
    corpus_block = lines[1 : lines.index("")]
    assert len({len(line) for line in corpus_block}) == 1
    assert f"{stats['mean_matched_similarity']:.4f}" in text


def test_a_corpus_of_failures_only_has_no_averages(tmp_path):
    out = write_corpus(tmp_path / "out", realistic_records(n_ok=0, n_failed=2)).out
    stats = compute_stats(out)
    assert stats["samples"] == 0 and stats["videos_failed"] == 2
    assert stats["avg_clips"] is None and stats["avg_document_tokens"] is None
    assert stats["mean_matched_similarity"] is None and stats["hours_of_video"] == 0
    text = format_stats(stats)
    assert any(line.split() == ["clips", "per", "video", "-"] for line in text.splitlines())


@pytest.mark.slow
def test_stats_of_a_real_build_agree_with_its_summary(demo_corpus):
    stats = compute_stats(demo_corpus)
    summary = json.loads((demo_corpus / "build.json").read_text())
    assert stats["videos_total"] == summary["sources"]
    assert stats["videos_ok"] == summary["ok"] == stats["samples"]
    assert stats["failures"] == summary["failures"]
    assert stats["hours_of_video"] > 0 and stats["avg_clips"] >= 1
    assert set(stats["stage_seconds"]) >= {"video", "assign"}


def test_ok_videos_that_stopped_decoding_early_and_keyframe_shortfall(stats, tables):
    videos = tables["videos"]
    ok = videos[videos.status == "ok"]
    assert stats["videos_ok_with_decode_error"] == ok.error.notna().sum() == 1
    assert stats["keyframe_shortfall"] == 5  # ok videos only
    assert stats["dropped"]["dropped_keyframe_shortfall"] == 12 and stats["dropped"]["dropped_decode_truncated"] == 1
    lines = format_stats(stats).splitlines()
    assert any(line.split() == ["decoding", "stopped", "early", "1"] for line in lines)
    assert any(line.split() == ["short", "of", "the", "budget", "5"] for line in lines)
