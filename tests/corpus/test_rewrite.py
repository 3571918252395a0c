import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from corpus_factory import Corpus, build_corpus
from loaders import cosmo_interleaved_video

from cosmo_data.corpus import rewrite
from cosmo_data.corpus.query import connect
from cosmo_data.corpus.rewrite import finish_pending_rewrite, read_tables, rewrite_corpus
from cosmo_data.corpus.validate import validate
from cosmo_data.schemas.records import FILTERED
from cosmo_data.storage import corpus_state


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Corpus:
    """6 ok videos and 2 failures in 3 groups of 3, all three formats."""
    return build_corpus(tmp_path_factory.mktemp("rewrite") / "out", n_ok=6, n_failed=2, videos_per_group=3)


@pytest.fixture
def out(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine.out, tmp_path / "out"))


def with_status(table: pa.Table, key: str, ids: set[str], status: str, reason: str) -> pa.Table:
    chosen = pc.is_in(table[key], pa.array(sorted(ids), pa.string()))
    statuses = pc.if_else(chosen, status, pc.coalesce(table["status"], "ok"))
    reasons = pc.if_else(chosen, reason, table["filter_reason"])
    table = table.set_column(table.schema.get_field_index("status"), "status", statuses)
    return table.set_column(table.schema.get_field_index("filter_reason"), "filter_reason", reasons)


def shard_keys(out: Path, fmt: str) -> set[str]:
    import tarfile

    keys = set()
    for tar_path in sorted((out / "shards" / fmt).glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            keys |= {m.name.split(".", 1)[0] for m in tar}
    return keys


def test_rewrite_takes_filtered_videos_and_documents_out_of_every_layout(out):
    tables = read_tables(out)
    ok_ids = sorted(pc.filter(tables["videos"]["video_id"], pc.equal(tables["videos"]["status"], "ok")).to_pylist())
    dropped_video, dropped_document = ok_ids[0], ok_ids[1]  # both in group 0
    tables["videos"] = with_status(tables["videos"], "video_id", {dropped_video}, FILTERED, "clip_brightness_min")
    tables["documents"] = with_status(tables["documents"], "doc_id", {dropped_document}, FILTERED, "doc_sim_mean")
    tables["videos"] = with_status(tables["videos"], "video_id", {dropped_document}, FILTERED, "doc_sim_mean")
    before = (out / "shards" / "native" / "000001.tar").read_bytes()

    summary = rewrite_corpus(out, tables)

    kept = set(ok_ids) - {dropped_video, dropped_document}
    assert summary.samples == {"cosmo": 4, "mmc4": 4, "native": 4}
    assert summary.samples_removed == {"cosmo": 2, "mmc4": 2, "native": 2}
    for fmt in ("native", "mmc4", "cosmo"):
        assert shard_keys(out, fmt) == kept
        sizes = json.loads((out / "shards" / fmt / "num_samples.json").read_text())
        assert sum(sizes.values()) == 4
    # COSMO's loader reads what is left (the factory's JPEGs are below OpenFlamingo's 10 KB minimum).
    cosmo = list(cosmo_interleaved_video([str(p) for p in sorted((out / "shards" / "cosmo").glob("*.tar"))]))
    assert len(cosmo) == 4
    # A group nothing was dropped from keeps its tar byte for byte.
    assert (out / "shards" / "native" / "000001.tar").read_bytes() == before
    # Rows stay, with their status and the rule's name.
    with connect(out) as db:
        rows = dict(db.execute("SELECT video_id, filter_reason FROM videos WHERE status = 'filtered'").fetchall())
        assert rows == {dropped_video: "clip_brightness_min", dropped_document: "doc_sim_mean"}
        assert db.execute("SELECT count(*) FROM documents").fetchone()[0] == 6
    build = json.loads((out / "build.json").read_text())
    assert build["ok"] == 4 and build["failures"]["filtered"] == 2
    assert not (out / "_state" / "rewrite").exists()
    report = validate(out)
    assert report.problems == []


def test_old_files_stay_until_the_new_set_is_complete_and_a_broken_switch_is_finished(out, monkeypatch):
    tables = read_tables(out)
    first = tables["videos"]["video_id"][0].as_py()
    tables["videos"] = with_status(tables["videos"], "video_id", {first}, FILTERED, "rule")
    old_tar = (out / "shards" / "mmc4" / "000000.tar").read_bytes()

    # Killed while staging: the old corpus is untouched, and the next rewrite drops the leftovers.
    real_write = rewrite.write_atomic
    calls = []

    def dying_write(path, data):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt
        real_write(path, data)

    monkeypatch.setattr(rewrite, "write_atomic", dying_write)
    with pytest.raises(KeyboardInterrupt):
        rewrite_corpus(out, tables)
    assert (out / "shards" / "mmc4" / "000000.tar").read_bytes() == old_tar
    assert validate(out).problems == []
    monkeypatch.setattr(rewrite, "write_atomic", real_write)
    assert finish_pending_rewrite(out) is False
    assert not (out / "_state" / "rewrite").exists()

    # Killed while switching: the next call moves the rest into place.
    real_move = corpus_state._move
    moved = []

    def dying_move(source, target):
        moved.append(target)
        if len(moved) == 3:
            raise KeyboardInterrupt
        real_move(source, target)

    monkeypatch.setattr(corpus_state, "_move", dying_move)
    with pytest.raises(KeyboardInterrupt):
        rewrite_corpus(out, tables)
    monkeypatch.setattr(corpus_state, "_move", real_move)
    assert finish_pending_rewrite(out) is True
    assert first not in shard_keys(out, "mmc4")
    assert validate(out).problems == []


def _die_after(monkeypatch, module, moves: int) -> None:
    """module._move raises (a kill) once `moves` files were moved."""
    real_move = module._move
    moved = []

    def dying_move(source, target):
        if len(moved) == moves:
            raise KeyboardInterrupt
        moved.append(target)
        real_move(source, target)

    monkeypatch.setattr(module, "_move", dying_move)


def _with_copies(out: Path, copies: set[str]) -> None:
    """Give these videos one content hash: exact copies of one file, for the duplicate pass."""
    tables = read_tables(out)
    chosen = pc.is_in(tables["videos"]["video_id"], pa.array(sorted(copies), pa.string()))
    hashes = pc.if_else(chosen, "ab" * 32, tables["videos"]["content_hash"])
    tables["videos"] = tables["videos"].set_column(
        tables["videos"].schema.get_field_index("content_hash"), "content_hash", hashes
    )
    rewrite_corpus(out, tables)


@pytest.mark.parametrize("reader", ["mark_exact_duplicates", "dedup_corpus"])
def test_a_rewrite_killed_while_switching_is_finished_before_the_duplicate_passes_read_the_tables(
    out, monkeypatch, reader
):
    from cosmo_data.corpus import dedup

    _with_copies(out, {"vid000_a", "vid001_b"})  # both in group 0
    tables = read_tables(out)
    tables["videos"] = with_status(tables["videos"], "video_id", {"vid004_e"}, FILTERED, "clip_brightness_min")
    # 10 files a group (6 table parts, 3 tars, its marker): killed once group 0 is switched, group 1 not.
    _die_after(monkeypatch, corpus_state, 10)
    with pytest.raises(KeyboardInterrupt):
        rewrite_corpus(out, tables)
    monkeypatch.undo()

    summary = getattr(dedup, reader)(out)

    assert summary.exact_videos == 1
    with connect(out) as db:
        statuses = dict(db.execute("SELECT video_id, status FROM videos").fetchall())
    assert statuses["vid004_e"] == FILTERED and statuses["vid001_b"] == "duplicate"
    assert "vid004_e" not in shard_keys(out, "mmc4")
    assert validate(out).problems == []


def test_a_document_whose_cosmo_sample_would_lose_every_clip_leaves_every_layout(out):
    # Near-duplicate clips (dedup marks clips only): every clip of vid000_a, while its keyframes stay ok.
    tables = read_tables(out)
    clips = tables["clips"]
    chosen = pc.equal(clips["video_id"], "vid000_a")
    clips = clips.set_column(clips.schema.get_field_index("status"), "status", pc.if_else(chosen, "duplicate", "ok"))
    tables["clips"] = clips

    summary = rewrite_corpus(out, tables)

    for fmt in ("native", "mmc4", "cosmo"):
        assert "vid000_a" not in shard_keys(out, fmt), fmt
    assert summary.samples == {"cosmo": 5, "mmc4": 5, "native": 5}
    with connect(out) as db:
        video = db.execute("SELECT status, filter_reason FROM videos WHERE video_id = 'vid000_a'").fetchone()
        document = db.execute("SELECT status, filter_reason FROM documents WHERE doc_id = 'vid000_a'").fetchone()
    assert video == document == ("filtered", "output_empty_sample")
    assert validate(out).problems == []


def test_a_missing_tar_of_a_finished_group_is_refused_before_anything_changes(out):
    tables = read_tables(out)
    tables["videos"] = with_status(tables["videos"], "video_id", {"vid000_a"}, FILTERED, "rule")
    (out / "shards" / "cosmo" / "000001.tar").unlink()
    marker = (out / "_state" / "groups" / "000001.json").read_text()

    with pytest.raises(rewrite.RewriteError, match="shards/cosmo/000001.tar"):
        rewrite_corpus(out, tables)

    assert "vid000_a" in shard_keys(out, "mmc4")
    assert (out / "_state" / "groups" / "000001.json").read_text() == marker
    assert not (out / "_state" / "rewrite").exists()


@pytest.mark.parametrize("reader", ["stats", "query", "validate", "train"])
def test_the_readers_finish_a_rewrite_killed_while_switching_before_they_read(out, monkeypatch, reader):
    from cosmo_data.corpus.query import run_query
    from cosmo_data.corpus.stats import compute_stats

    tables = read_tables(out)
    tables["videos"] = with_status(tables["videos"], "video_id", {"vid004_e"}, FILTERED, "clip_brightness_min")
    _die_after(monkeypatch, corpus_state, 10)  # group 0 switched, group 1 (vid004_e's) not
    with pytest.raises(KeyboardInterrupt):
        rewrite_corpus(out, tables)
    monkeypatch.undo()

    if reader == "stats":
        assert compute_stats(out)["videos_ok"] == 5
    elif reader == "query":
        answer = run_query(out, "SELECT status FROM videos WHERE video_id = 'vid004_e'", "csv")
        assert answer.split() == ["status", "filtered"]
    elif reader == "validate":
        assert validate(out).problems == []
    else:
        from cosmo_data.train.shards import shard_tars

        assert shard_tars(out / "shards" / "mmc4")
        assert "vid004_e" not in shard_keys(out, "mmc4")
    assert not (out / "_state" / "rewrite").exists()


def test_a_group_change_with_its_own_sample_edits_rewrites_only_that_group(out):
    # What `narrate` does through rewrite_groups: new text in a document's row and in its samples.
    def retold(sample: dict) -> dict:
        if "text_list" in sample:
            sample["text_list"] = ["retold"] + sample["text_list"][1:]
        return sample

    def change(group: int, tables: dict[str, pa.Table]) -> rewrite.GroupChange:
        if group != 0:
            return rewrite.GroupChange(tables)
        rows = tables["documents"].to_pylist()
        for row in rows:
            if row["doc_id"] == "vid001_b":
                row["text_list"] = ["retold"] + row["text_list"][1:]
        tables["documents"] = pa.Table.from_pylist(rows, schema=tables["documents"].schema)
        return rewrite.GroupChange(tables, {"vid001_b": retold})

    untouched = (out / "shards" / "mmc4" / "000001.tar").read_bytes()
    summary = rewrite.rewrite_groups(out, change, {"command": "narrate"})

    assert summary.samples_removed == {"cosmo": 0, "mmc4": 0, "native": 0}
    assert (out / "shards" / "mmc4" / "000001.tar").read_bytes() == untouched
    import tarfile

    with tarfile.open(out / "shards" / "mmc4" / "000000.tar") as tar:
        sample = json.loads(tar.extractfile("vid001_b.json").read())
    assert sample["text_list"][0] == "retold"
    with connect(out) as db:
        texts = db.execute("SELECT text_list FROM documents WHERE doc_id = 'vid001_b'").fetchone()[0]
    assert texts[0] == "retold" and rewrite.applied_steps(out) == [{"command": "narrate"}]
    assert validate(out).problems == []
