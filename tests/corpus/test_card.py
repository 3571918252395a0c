"""The dataset card: Hugging Face datasets reads every table it names as a config, with the features it
declares, and the shard loading line it gives, on a real build (the shared demo corpus, copied)."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
import yaml

from cosmo_data.corpus.card import write_card

pytestmark = pytest.mark.slow


@pytest.fixture
def corpus(demo_corpus, tmp_path):
    copy = tmp_path / "corpus"
    shutil.copytree(demo_corpus, copy)
    write_card(copy)
    return copy


def card_header(corpus) -> dict:
    text = (corpus / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_every_table_loads_by_its_config_and_the_documents_by_default(corpus, tmp_path):
    import datasets

    header = card_header(corpus)
    configs = {config["config_name"]: config for config in header["configs"]}
    assert {"videos", "clips", "frames", "documents", "embeddings"} <= set(configs)
    assert configs["documents"]["default"] is True
    cache = str(tmp_path / "hf")
    for name in configs:
        loaded = datasets.load_dataset(str(corpus), name, split="train", cache_dir=cache)
        assert len(loaded) == pq.read_table(corpus / name).num_rows, name
        declared = next(info["features"] for info in header["dataset_info"] if info["config_name"] == name)
        assert list(loaded.features) == [feature["name"] for feature in declared]
    documents = datasets.load_dataset(str(corpus), split="train", cache_dir=cache)
    assert set(documents["doc_id"]) == set(pq.read_table(corpus / "documents")["doc_id"].to_pylist())
    assert "timings" not in configs["videos"]["columns"]  # datasets has no map type


def test_the_card_says_how_to_load_the_shards_and_counts_the_funnel(corpus, tmp_path):
    import datasets

    text = (corpus / "README.md").read_text()
    assert '"PATH/shards/mmc4/*.tar"' in text
    mmc4 = datasets.load_dataset(
        "webdataset",
        data_files={"train": str(corpus / "shards" / "mmc4" / "*.tar")},
        split="train",
        cache_dir=str(tmp_path / "hf"),
    )
    sizes = json.loads((corpus / "shards" / "mmc4" / "sizes.json").read_text())
    assert len(mmc4) == sum(sizes.values()) and mmc4[0]["json"]["text_list"]
    assert f"- `shards/mmc4/`: {len(mmc4)} samples;" in text
    statuses = pq.read_table(corpus / "videos")["status"].to_pylist()
    assert f"| invalid_source | {statuses.count('invalid_source')} |" in text and "invalid_source" in statuses
    assert f"| videos ok | {statuses.count('ok')} |" in text
    assert "- local: " in text and "licence unknown" in text
