from pathlib import Path

import pandas as pd
import pytest

from cosmo_data.pipeline.sources import SourceError, classify, read_exclude_ids, read_sources


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_text_file_skips_comments_blanks_and_repeated_lines(tmp_path):
    source = write(tmp_path, "ids.txt", b"# HowTo100M sample\n\ndQw4w9WgXcQ\n  dQw4w9WgXcQ  \nabcdefghijk\n")
    rows = read_sources([source])
    assert [r.video_id for r in rows] == ["dQw4w9WgXcQ", "abcdefghijk"]
    assert [r.source_index for r in rows] == [0, 1]
    assert rows[0].locator == "https://www.youtube.com/watch?v=dQw4w9WgXcQ"
    assert all(r.kind == "youtube" and r.status is None for r in rows)


def test_same_video_under_another_spelling_is_a_duplicate_row_of_the_first(tmp_path):
    clip = write(tmp_path, "clip.mp4", b"")
    lines = [
        "https://www.youtube.com/watch?v=dQw4w9WgXcQ&t=10",
        "abcdefghijk",
        "dQw4w9WgXcQ",
        "https://youtu.be/dQw4w9WgXcQ",
        "https://youtu.be/dQw4w9WgXcQ",  # the same line again: skipped
        str(clip),
        "./clip.mp4",
    ]
    rows = read_sources([write(tmp_path, "ids.txt", "\n".join(lines).encode())])
    assert [(r.source, r.status, r.duplicate_of) for r in rows] == [
        (lines[0], None, None),
        ("abcdefghijk", None, None),
        ("dQw4w9WgXcQ", "duplicate", "dQw4w9WgXcQ"),
        ("https://youtu.be/dQw4w9WgXcQ", "duplicate", "dQw4w9WgXcQ"),
        (str(clip), None, None),
        ("./clip.mp4", "duplicate", rows[4].video_id),
    ]
    assert len({r.video_id for r in rows}) == len(rows)  # every row keeps a key of its own
    assert [r.source_index for r in rows] == list(range(len(rows)))
    assert "the same video as" in rows[2].error


def test_exclude_ids_mark_rows_whatever_the_spelling(tmp_path):
    excluded = read_exclude_ids(
        write(tmp_path, "eval.txt", b"# eval set\nhttps://youtu.be/abcdefghijk\nhttp://h/v.mp4\n")
    )
    assert excluded == {"abcdefghijk", "http://h/v.mp4"}
    source = write(tmp_path, "ids.txt", b"abcdefghijk\ndQw4w9WgXcQ\nhttp://h/v.mp4\nhttp://h/w.mp4\n")
    rows = read_sources([source], exclude_ids=excluded)
    assert [r.status for r in rows] == ["excluded", None, "excluded", None]
    assert rows[0].error and rows[1].error is None


def test_exclude_file_with_a_bad_line_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="exclude file"):
        read_exclude_ids(write(tmp_path, "eval.txt", b"abcdefghijk\nnot a video\n"))


@pytest.mark.parametrize(
    "line, kind",
    [
        ("https://www.youtube.com/watch?v=dQw4w9WgXcQ&t=10", "youtube"),
        ("https://www.youtube.com/shorts/dQw4w9WgXcQ", "youtube"),
        ("http://127.0.0.1:8000/videos/a%20b.mp4", "url"),
        ("/data/videos/clip one.mp4", "local"),
        ("videos/ünïcode name.mkv", "local"),
        ("file:///data/x.webm", "local"),
        ("-bcdefghijk", "youtube"),  # real YouTube ids may start with '-'; never parsed as an option
    ],
)
def test_valid_lines(line, kind, tmp_path):
    row = classify(line, 0, tmp_path)
    assert row.kind == kind, row.error
    assert row.error is None
    assert all(c.isalnum() or c in "_-" for c in row.video_id)
    if kind == "local":
        assert Path(row.locator).is_absolute()


@pytest.mark.parametrize(
    "line",
    [
        "$(touch /tmp/pwned)",
        "`touch /tmp/pwned`",
        "abc; rm -rf /",
        "--exec 'touch /tmp/pwned'",
        "-o /etc/passwd",
        "../../etc/passwd.mp4",
        "videos/../../../secret.mp4",
        "ftp://example.com/v.mp4",
        "not a video",
        "http://",
        "https://exa mple.com/v.mp4",
    ],
)
def test_hostile_or_malformed_lines_become_invalid_rows(line):
    row = classify(line, 3)
    assert row.kind == "invalid"
    assert row.locator == ""
    assert row.error.startswith("invalid source line 4:")
    assert row.video_id.startswith("invalid-")


def test_invalid_utf8_line_is_a_failed_row_and_others_survive(tmp_path):
    source = write(tmp_path, "ids.txt", b"dQw4w9WgXcQ\n\xff\xfebad\nabcdefghijk\n")
    rows = read_sources([source])
    assert [r.kind for r in rows] == ["youtube", "invalid", "youtube"]
    assert "not valid UTF-8" in rows[1].error


def test_repeated_bad_lines_are_one_row(tmp_path):
    source = write(tmp_path, "ids.txt", b"$(x)\n$(x)\nnot a video\n")
    rows = read_sources([source])
    assert len(rows) == 2


def test_howto100m_csv_layout(tmp_path):
    csv = tmp_path / "HowTo100M_v1.csv"
    pd.DataFrame(
        {
            "video_id": ["dQw4w9WgXcQ", "abcdefghijk", "dQw4w9WgXcQ"],
            "category_1": ["a", "b", "a"],
            "rank": [1, 2, 1],
            "task_id": [10, 11, 10],
        }
    ).to_csv(csv, index=False)
    rows = read_sources([csv])
    assert [r.video_id for r in rows] == ["dQw4w9WgXcQ", "abcdefghijk"]


def test_parquet_with_url_column(tmp_path):
    table = tmp_path / "urls.parquet"
    pd.DataFrame({"url": ["http://127.0.0.1/a.mp4", None]}).to_parquet(table)
    rows = read_sources([table])
    assert [r.kind for r in rows] == ["url", "invalid"]


def test_table_without_usable_column_is_a_source_error(tmp_path):
    csv = tmp_path / "x.csv"
    pd.DataFrame({"name": ["a"]}).to_csv(csv, index=False)
    with pytest.raises(SourceError, match="video_id"):
        read_sources([csv])


def test_missing_source_file_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        read_sources([tmp_path / "nope.txt"])


def test_folder_of_videos_and_numbering_across_sources(tmp_path):
    (tmp_path / "v").mkdir()
    for name in ("b.mp4", "a.mkv", "notes.txt"):
        (tmp_path / "v" / name).write_bytes(b"x")
    ids = write(tmp_path, "ids.txt", b"dQw4w9WgXcQ\n")
    rows = read_sources([ids, tmp_path / "v"])
    assert [r.source_index for r in rows] == [0, 1, 2]
    assert [Path(r.locator).name for r in rows[1:]] == ["a.mkv", "b.mp4"]


def test_a_sources_credentials_stay_in_its_locator_only(tmp_path):
    """videos.source and the sample json come from row.source: the password and the signature must not."""
    password = "https://user:hunter2@example.com/videos/v.mp4"
    presigned = "https://b.s3.amazonaws.com/v.mp4?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=f00dcafe"
    resigned = presigned.replace("f00dcafe", "0ddba11")
    bad = "ftp://user:hunter2@example.com/v.mp4"
    rows = read_sources([write(tmp_path, "s.txt", "\n".join([password, presigned, resigned, bad]).encode())])
    assert [(r.kind, r.source) for r in rows] == [
        ("url", "https://example.com/videos/v.mp4"),
        ("url", "https://b.s3.amazonaws.com/v.mp4"),
        ("invalid", "ftp://example.com/v.mp4"),
    ]  # the re-signed link is the same video, same line once redacted
    assert [r.locator for r in rows[:2]] == [password, presigned]  # the downloader still gets the real URL
    for row in rows:
        assert not any(
            secret in f"{row.source} {row.video_id} {row.error}" for secret in ("hunter2", "f00dcafe", "AKIA")
        )
    assert rows[1].source_id == "https://b.s3.amazonaws.com/v.mp4"
