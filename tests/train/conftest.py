"""Small real corpora in all three layouts and the tiny training config's pretrained parts."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import webdataset as wds
from corpus_factory import build_corpus

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "train-tiny.yaml"


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """Six videos, two per shard, and a failed one alone in the last, empty shard: shards/{native,mmc4,cosmo}/00000{0..3}.tar."""
    out = tmp_path_factory.mktemp("train-corpus")
    build_corpus(out, n_ok=6, n_failed=1, videos_per_group=2)
    return out / "shards"


@pytest.fixture(scope="session")
def pretrained():
    from cosmo_data.train.config import load_train_config
    from cosmo_data.train.weights import load_pretrained

    return load_pretrained(load_train_config(TINY))


def read_samples(tar: Path) -> list[dict]:
    return list(wds.WebDataset(str(tar), shardshuffle=False))


@pytest.fixture(scope="session")
def corrupt_folder(corpus, tmp_path_factory) -> Path:
    """One tar of good mmc4 and cosmo-free samples with broken ones between them: unparsable json, an
    image that is not a JPEG, and text_list/image_info that do not match."""
    folder = tmp_path_factory.mktemp("corrupt")
    good = read_samples(corpus / "mmc4" / "000000.tar") + read_samples(corpus / "mmc4" / "000001.tar")
    broken_image = json.loads(good[0]["json"])
    broken_image["image_info"][0]["image_base64"] = "bm90IGEganBlZw=="  # "not a jpeg"
    broken_image["image_info"] = broken_image["image_info"][:1]
    mismatched = json.loads(good[1]["json"])
    for entry in mismatched["image_info"]:
        entry["matched_text_index"] = 999
    broken = [
        {"__key__": "bad-json", "json": b"{not json"},
        {"__key__": "bad-image", "json": json.dumps(broken_image).encode()},
        {"__key__": "bad-index", "json": json.dumps(mismatched).encode()},
    ]
    buffer = io.BytesIO()
    with wds.TarWriter(buffer) as writer:
        for sample in [good[0], broken[0], good[1], broken[1], good[2], broken[2], *good[3:]]:
            writer.write({"__key__": sample["__key__"], "json": sample["json"]})
    (folder / "000000.tar").write_bytes(buffer.getvalue())
    return folder
