"""`cosmo-data filter`: rules applied again to a built corpus from its stored signals, without decoding or
a model, and the shards rewritten to match, as the trainers' loaders read them."""

import json
import re
import tarfile
from pathlib import Path

import av
import pytest
from corpus_factory import realistic_records, write_corpus
from loaders import cosmo_interleaved_video
from typer.testing import CliRunner

from cosmo_data import models
from cosmo_data.cli import app
from cosmo_data.corpus.filter import filter_corpus
from cosmo_data.corpus.preview import write_preview
from cosmo_data.corpus.query import connect
from cosmo_data.corpus.stats import compute_stats, format_stats
from cosmo_data.corpus.validate import validate
from cosmo_data.models import predictors
from cosmo_data.schemas.config import CurationConfig


@pytest.fixture
def corpus(tmp_path) -> Path:
    """6 ok videos with curation signals: vid000's second clip is black, every clip of vid001 is, vid002
    barely speaks, vid003's first keyframe is NSFW, vid004's keyframes are ugly and one of vid005's is;
    the rest are plain."""
    records = realistic_records(n_ok=6, n_failed=1)
    for record in records[:6]:
        record.words_per_s, record.motion, record.audio_dbfs = 2.0, 8.0, -20.0
        for clip in record.clips:
            clip.brightness, clip.motion, clip.frozen_fraction = 100.0, 8.0, 0.0
        for frame in record.frames:
            frame.aesthetic, frame.nsfw = 5.0, 0.01
    records[3].frames[0].nsfw = 0.9
    for frame in records[4].frames:
        frame.aesthetic = 3.0
    records[5].frames[1].aesthetic = 4.0  # mean 4.67: one weak image does not sink a document
    records[0].clips[1].brightness = 3.0
    for clip in records[1].clips:
        clip.brightness = 2.0
    records[2].words_per_s = 0.1
    return write_corpus(tmp_path / "out", records, videos_per_group=3).out


@pytest.fixture
def model_calls(monkeypatch) -> list[str]:
    """Every model load and every video opened, counted (a re-filter must make none)."""
    calls: list[str] = []
    for name in ("load_whisper", "load_open_clip", "load_hf_captioner"):
        monkeypatch.setattr(models, name, lambda *args, _name=name, **kwargs: calls.append(_name))
    monkeypatch.setattr(predictors, "load_predictor", lambda *args, **kwargs: calls.append("load_predictor"))
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *args, **kwargs: calls.append("av.open") or real_open(*args, **kwargs))
    return calls


def members(out: Path, fmt: str) -> dict[str, bytes]:
    found = {}
    for path in sorted((out / "shards" / fmt).glob("*.tar")):
        with tarfile.open(path) as tar:
            found.update({m.name: tar.extractfile(m).read() for m in tar})
    return found


def test_a_stricter_rule_changes_tables_and_shards_without_a_model(corpus, model_calls):
    summary = filter_corpus(corpus, CurationConfig.model_validate({"clip": {"min_brightness": 10}}))

    assert model_calls == []
    assert summary.dropped == {"clip_min_brightness": {"clips": 4, "frames": 4, "videos": 1}}
    with connect(corpus) as db:
        videos = dict(db.execute("SELECT video_id, coalesce(filter_reason, status) FROM videos").fetchall())
        dropped_clips = db.execute(
            "SELECT video_id, clip_idx FROM clips WHERE status = 'filtered' ORDER BY ALL"
        ).fetchall()
        counters = dict(db.execute("SELECT video_id, counters['dropped_clip_min_brightness'] FROM videos").fetchall())
    assert videos["vid000_a"] == "ok" and videos["vid001_b"] == "clip_min_brightness"
    assert dropped_clips == [("vid000_a", 1), ("vid001_b", 0), ("vid001_b", 1), ("vid001_b", 2)]
    assert counters["vid000_a"] == 1 and counters["vid001_b"] == 3

    # vid001 left every layout; vid000 keeps its sample, less the black clip's keyframe and clip.
    native = members(corpus, "native")
    assert not any(name.startswith("vid001_b.") for name in native)
    assert "vid000_a.1.jpg" not in native and {"vid000_a.0.jpg", "vid000_a.2.jpg"} <= set(native)
    meta = json.loads(native["vid000_a.json"])
    assert [f["frame_idx"] for f in meta["frames"]] == [0, 2] and [c["clip_idx"] for c in meta["clips"]] == [0, 2]
    assert [i["frame_idx"] for i in meta["image_info"]] == [0, 2] and len(meta["similarity_matrix"]) == 2
    mmc4 = json.loads(members(corpus, "mmc4")["vid000_a.json"])
    assert [i["frame_idx"] for i in mmc4["image_info"]] == [0, 2]
    cosmo_json = json.loads(members(corpus, "cosmo")["vid000_a.json"])
    assert [c["clip_idx"] for c in cosmo_json["source_clips"]] == [0, 2]
    # COSMO's loader reads the 5 samples left, each with the clips its video still holds ok.
    with connect(corpus) as db:
        ok_clips = db.execute(
            "SELECT count(*) FROM clips JOIN videos v USING (video_id) "
            "WHERE v.status = 'ok' AND clips.status = 'ok' GROUP BY video_id"
        ).fetchall()
    assert sorted(len(example.captions) for example in _cosmo_examples(corpus)) == sorted(n for (n,) in ok_clips)
    assert validate(corpus).problems == []
    # The preview shows what the rule dropped: the filtered video with its rule, the black clip of a kept one.
    page = write_preview(corpus, corpus.parent / "preview.html").path.read_text()
    assert re.search(r"<td>vid001_b</td>.*?<td>clip_min_brightness</td>", page)
    assert re.search(r"<td>vid000_a</td><td>clip 1</td><td>[^<]*</td><td class=\"status\">clip_min_brightness<", page)

    # Stricter again, through the command line: a speech rule takes vid002 too.
    model_calls.clear()  # validate opened the cosmo mp4s above
    config = corpus.parent / "strict.yaml"
    config.write_text("curation:\n  clip: {min_brightness: 10}\n  video: {min_words_per_s: 0.5}\n")
    result = CliRunner().invoke(app, ["filter", str(corpus), "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "video_min_words_per_s: 1 videos" in result.output
    assert "video_min_words_per_s" in (corpus / "README.md").read_text()  # the dataset card's funnel
    assert model_calls == []
    assert not any(name.startswith("vid002_c.") for name in members(corpus, "mmc4"))
    stats = compute_stats(corpus)
    report = format_stats(stats)
    assert "- clip_min_brightness" in report and "- video_min_words_per_s" in report
    funnel = stats["funnel"]
    assert list(funnel["steps"].items()) == [
        ("clip_min_brightness", {"videos": 1, "clips": 4, "frames": 4, "documents": 1}),
        ("video_min_words_per_s", {"videos": 1, "clips": 4, "frames": 4, "documents": 1}),  # vid002's 4 clips
    ]
    assert funnel["after"]["videos"] == funnel["after"]["documents"] == 4
    for table, before in funnel["before"].items():
        assert before == funnel["after"][table] + sum(removed[table] for removed in funnel["steps"].values())
    assert validate(corpus).problems == []


def test_stricter_nsfw_and_aesthetic_rules_change_the_corpus_from_the_stored_scores(corpus, model_calls):
    rules = {"frame": {"max_nsfw": 0.1}, "document": {"min_aesthetic": 4.5}}
    summary = filter_corpus(corpus, CurationConfig.model_validate(rules))

    assert model_calls == []
    assert summary.dropped == {
        "frame_max_nsfw": {"frames": 1, "clips": 1},  # the flagged keyframe takes its clip
        "document_min_aesthetic": {"documents": 1, "videos": 1},
    }
    native = members(corpus, "native")
    assert "vid003_d.0.jpg" not in native and "vid003_d.1.jpg" in native
    assert [i["frame_idx"] for i in json.loads(native["vid003_d.json"])["image_info"]] == [1]
    assert not any(name.startswith("vid004_e.") for name in native) and "vid005_f.json" in native
    stats = compute_stats(corpus)
    assert stats["signals"]["frames.nsfw"]["quantiles"]["q100"] == pytest.approx(0.9)
    assert stats["signals"]["frames.aesthetic"]["quantiles"]["q0"] == pytest.approx(3.0)
    assert list(stats["funnel"]["steps"]) == ["frame_max_nsfw", "document_min_aesthetic"]
    assert stats["funnel"]["steps"]["frame_max_nsfw"]["frames"] == 1
    assert validate(corpus).problems == []


def test_a_keyframe_failing_the_nsfw_rule_takes_its_clip_and_its_caption_out_of_every_layout(corpus):
    flagged = "a hand holding a blue rope"  # vid003's first keyframe (nsfw 0.9), over its clip 0
    mmc4_before = json.loads(members(corpus, "mmc4")["vid003_d.json"])
    matched_before = [mmc4_before["text_list"][i["matched_text_index"]] for i in mmc4_before["image_info"]][1:]

    filter_corpus(corpus, CurationConfig.model_validate({"frame": {"max_nsfw": 0.1}}))

    native, mmc4 = (json.loads(members(corpus, fmt)["vid003_d.json"]) for fmt in ("native", "mmc4"))
    cosmo = json.loads(members(corpus, "cosmo")["vid003_d.json"])
    assert [c["clip_idx"] for c in cosmo["source_clips"]] == [1]
    assert flagged not in cosmo["clips"] and len(json.loads(cosmo["clips"])) == 1
    assert [c["clip_idx"] for c in native["clips"]] == [1]
    for sample in (native, mmc4):
        assert flagged not in sample["text_list"]
        assert [len(row) for row in sample["similarity_matrix"]] == [len(sample["text_list"])]
        assert [sample["text_list"][i["matched_text_index"]] for i in sample["image_info"]] == matched_before
    with connect(corpus) as db:
        texts = db.execute("SELECT text_list FROM documents WHERE doc_id = 'vid003_d'").fetchone()[0]
        clip = db.execute("SELECT status, filter_reason FROM clips WHERE video_id = 'vid003_d' AND clip_idx = 0")
        assert clip.fetchone() == ("filtered", "frame_max_nsfw")
    assert flagged not in texts and texts == native["text_list"]
    assert len(list(_cosmo_examples(corpus))) == 6
    assert validate(corpus).problems == []


def _cosmo_examples(out: Path):
    return cosmo_interleaved_video([str(p) for p in sorted((out / "shards" / "cosmo").glob("*.tar"))])


def test_filter_rewrites_a_corpus_in_a_bucket_as_in_a_folder(corpus, s3, tmp_path):
    bucket = s3.create_bucket("corpus-filter")
    client = s3.client()
    for path in sorted(p for p in corpus.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"c/{path.relative_to(corpus)}")
    rules = CurationConfig.model_validate({"clip": {"min_brightness": 10}})
    remote = filter_corpus(f"s3://{bucket}/c", rules)
    local = filter_corpus(corpus, rules)
    assert remote.dropped == local.dropped and remote.rewrite == local.rewrite
    listed = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="c/")["Contents"]}
    assert not [key for key in listed if "/_state/rewrite/" in key]
    shard = client.get_object(Bucket=bucket, Key="c/shards/mmc4/000000.tar")["Body"].read()
    assert shard == (corpus / "shards" / "mmc4" / "000000.tar").read_bytes()


def test_a_video_whose_every_clip_had_a_flagged_keyframe_is_filtered_under_that_rule(corpus):
    summary = filter_corpus(corpus, CurationConfig.model_validate({"frame": {"max_nsfw": 0.005}}))

    assert summary.dropped["frame_max_nsfw"]["videos"] == 6
    with connect(corpus) as db:
        rows = db.execute("SELECT status, filter_reason, error FROM videos WHERE source_index < 6").fetchall()
    assert set(rows) == {
        ("filtered", "frame_max_nsfw", "every clip had a keyframe that failed a rule (frame_max_nsfw)")
    }
    assert all(not members(corpus, fmt) for fmt in ("native", "mmc4", "cosmo"))
    assert validate(corpus).problems == []
