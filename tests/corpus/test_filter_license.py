"""`cosmo-data filter` applies the licence rule from the stored metadata, as the build does: to what
yt-dlp downloaded, never to local files (which have no licence to judge)."""

from pathlib import Path

import pyarrow.parquet as pq
from corpus_factory import realistic_records, write_corpus

from cosmo_data.corpus.filter import filter_corpus
from cosmo_data.schemas.config import CurationConfig


def test_only_creative_commons_keeps_cc_downloads_and_local_files(tmp_path):
    records = realistic_records(n_ok=3, n_failed=0)
    licences = ["Creative Commons Attribution license (reuse allowed)", "Standard YouTube License"]
    for record, licence in zip(records, licences):
        record.ytdlp_version, record.platform = "2026.11.23", {"license": licence}
    out = write_corpus(tmp_path / "out", records, videos_per_group=3).out

    filter_corpus(out, CurationConfig.model_validate({"video": {"licenses": ["creative commons"]}}))

    videos = pq.read_table(sorted(Path(out, "videos").glob("*.parquet"))).to_pylist()
    assert [(v["status"], v["filter_reason"]) for v in videos] == [
        ("ok", None),
        ("filtered", "video_licenses"),
        ("ok", None),
    ]
