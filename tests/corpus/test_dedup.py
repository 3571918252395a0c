"""Duplicates end to end, through the CLI on a real build (embedded Ray, tiny models): one upload under
two URLs (a local path and a loopback HTTP URL: the same bytes), the same file under two spellings of
its path, an id kept out by --exclude-ids, and, found only by `cosmo-data dedup`, an ffmpeg re-encode
of the same footage (a near-duplicate video) and another video opening with the same shot (a
near-duplicate clip, a channel's intro). The card the build writes is read back by Hugging Face
datasets."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from loopback import serve_directory
from typer.testing import CliRunner

from cosmo_data.cli import TINY_CONFIG, app
from cosmo_data.pipeline.generated_media import CUT, make_sample_video, run_ffmpeg

pytestmark = pytest.mark.slow

# The tiny CLIP's random weights put every picture near every other (two unrelated generated videos:
# cosine 0.977, a video sharing one of its two shots 0.995; the re-encode 0.9992, the shared shot
# 0.9986-1.0), so the test draws the line higher than a real model needs (dedup's default, 0.95).
TINY_MODEL_THRESHOLD = 0.998


def videos_table(corpus: Path) -> dict[str, dict]:
    rows = pq.read_table(corpus / "videos").to_pylist()
    return {row["source_index"]: row for row in rows}


def shard_keys(corpus: Path, layout: str) -> set[str]:
    keys = set()
    for tar in (corpus / "shards" / layout).glob("*.tar"):
        with tarfile.open(fileobj=io.BytesIO(tar.read_bytes())) as archive:
            keys |= {member.name.split(".", 1)[0] for member in archive}
    return keys


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    media = tmp_path_factory.mktemp("dedup_media")
    original, other, reencoded = media / "a.mp4", media / "b.mp4", media / "a_reencoded.mp4"
    for path, seed in ((original, 0), (other, 3)):
        make_sample_video(path, segments=[1.5, 1.5], transitions=[CUT], size=(160, 120), fps=10, seed=seed, audio=False)
    run_ffmpeg(["-i", str(original), "-c:v", "libx264", "-crf", "32", "-vf", "scale=200:150", str(reencoded)])
    # The original's first shot, then a shot of its own.
    intro, new_shot = media / "same_intro.mp4", media / "new_shot.mp4"
    make_sample_video(new_shot, segments=[1.5], transitions=[], size=(160, 120), fps=10, seed=5, audio=False)
    graph = "[0:v]trim=0:1.5,setpts=PTS-STARTPTS[intro];[intro][1:v]concat=n=2:v=1[v]"
    run_ffmpeg(["-i", str(original), "-i", str(new_shot), "-filter_complex", graph, "-map", "[v]", str(intro)])
    evaluation = media / "eval_clip.mp4"  # never opened: excluded before the build looks at it
    out = tmp_path_factory.mktemp("dedup_corpus") / "corpus"
    with serve_directory(media) as server:
        lines = {
            "original": str(original),
            "same_bytes_by_http": server.url("files/a.mp4"),
            "other": str(other),
            "reencoded": str(reencoded),
            "same_path_spelled_otherwise": f"file://{original}",
            "excluded": str(evaluation),
            "same_intro": str(intro),
        }
        (media / "sources.txt").write_text("\n".join(lines.values()) + "\n")
        (media / "eval.txt").write_text(f"{evaluation}\n")
        result = CliRunner().invoke(
            app,
            ["build", "-s", str(media / "sources.txt"), "-o", str(out), "-c", str(TINY_CONFIG)]
            + ["--set", "asr.enabled=false", "--set", "output.videos_per_shard=2", "--set", "narration.enabled=false"]
            + ["--exclude-ids", str(media / "eval.txt")],
        )
    assert result.exit_code == 0, result.output
    return out, {name: index for index, name in enumerate(lines)}


def test_build_marks_exact_copies_and_exclusions_and_keeps_them_out_of_the_shards(built):
    corpus, at = built
    videos = videos_table(corpus)
    kept = videos[at["original"]]
    assert kept["status"] == "ok" and len(kept["content_hash"]) == 64
    by_http = videos[at["same_bytes_by_http"]]
    assert (by_http["status"], by_http["duplicate_of"]) == ("duplicate", kept["video_id"])
    assert by_http["content_hash"] == kept["content_hash"] and "sha256" in by_http["error"]
    assert by_http["duplicate_similarity"] == 1.0
    spelled = videos[at["same_path_spelled_otherwise"]]
    assert (spelled["status"], spelled["duplicate_of"], spelled["n_frames"]) == ("duplicate", kept["video_id"], 0)
    assert spelled["timings"] == []  # never sent through a stage
    assert videos[at["excluded"]]["status"] == "excluded"
    assert videos[at["reencoded"]]["content_hash"] != kept["content_hash"]
    for layout in ("native", "mmc4", "cosmo"):
        built_ok = ("original", "other", "reencoded", "same_intro")
        assert shard_keys(corpus, layout) == {videos[at[name]]["video_id"] for name in built_ok}
    build = json.loads((corpus / "build.json").read_text())
    assert build["failures"] == {"duplicate": 2, "excluded": 1} and build["ok"] == 4


def test_dedup_finds_the_reencode_and_keeps_the_better_scored(built, tmp_path):
    corpus, at = built
    result = CliRunner().invoke(app, ["dedup", str(corpus), "--threshold", str(TINY_MODEL_THRESHOLD)])
    assert result.exit_code == 0, result.output
    # The exact copy was marked by the build already: nothing exact is left to mark.
    assert "0 videos exact" in result.output and "1 videos and 1 clips near" in result.output
    videos = videos_table(corpus)
    pair = [videos[at["original"]], videos[at["reencoded"]]]
    documents = pq.read_table(corpus / "documents").to_pylist()
    score = {d["video_id"]: sum(i["matched_sim"] for i in d["image_info"]) / len(d["image_info"]) for d in documents}
    kept, copy = sorted(pair, key=lambda v: (-score[v["video_id"]], v["source_index"]))
    assert (kept["status"], copy["status"], copy["duplicate_of"]) == ("ok", "duplicate", kept["video_id"])
    assert copy["duplicate_similarity"] >= TINY_MODEL_THRESHOLD
    assert videos[at["other"]]["status"] == "ok" and videos[at["other"]]["duplicate_of"] is None
    # The shared opening shot: of the two clips, the one of the better-scored video is kept.
    intro = videos[at["same_intro"]]
    first_clip_kept, first_clip_copy = sorted([kept, intro], key=lambda v: (-score[v["video_id"]], v["source_index"]))
    clips = {(c["video_id"], c["clip_idx"]): c for c in pq.read_table(corpus / "clips").to_pylist()}
    duplicates = {key: c for key, c in clips.items() if c["status"] == "duplicate"}
    assert list(duplicates) == [(first_clip_copy["video_id"], 0)]
    assert duplicates[(first_clip_copy["video_id"], 0)]["duplicate_of"] == f"{first_clip_kept['video_id']}/0"
    assert duplicates[(first_clip_copy["video_id"], 0)]["duplicate_similarity"] >= TINY_MODEL_THRESHOLD
    # A duplicate video leaves the shards; a video with a duplicate clip stays.
    expected = {kept["video_id"], videos[at["other"]]["video_id"], intro["video_id"]}
    for layout in ("native", "mmc4", "cosmo"):
        assert shard_keys(corpus, layout) == expected
        sizes = json.loads((corpus / "shards" / layout / "sizes.json").read_text())
        assert sum(sizes.values()) == 3
    validated = CliRunner().invoke(app, ["validate", str(corpus)])
    assert validated.exit_code == 0, validated.output
    # The card follows the corpus, and datasets reads it without a script.
    import datasets

    loaded = datasets.load_dataset(str(corpus), "videos", split="train", cache_dir=str(tmp_path / "hf"))
    statuses = {row["source_index"]: row["status"] for row in loaded}
    assert statuses == {index: row["status"] for index, row in videos.items()}
    assert "| duplicate | 3 |" in (corpus / "README.md").read_text()
