"""LAION's aesthetic and NSFW predictors: real checkpoint layouts, published names, tiny ones, and the
scores the CLIP stage stores from the embeddings it computes anyway."""

from __future__ import annotations

import io
import urllib.request
import zipfile

import pytest
import torch
from PIL import Image

from cosmo_data import models
from cosmo_data.models import TINY_CLIP, ModelError
from cosmo_data.models import predictors as predictors_module
from cosmo_data.models.predictors import AESTHETIC, NSFW, load_predictor
from cosmo_data.pipeline.writer import table_rows
from cosmo_data.schemas.config import BuildConfig
from cosmo_data.schemas.records import OK, Document, Frame, Sentence, VideoRecord
from cosmo_data.stages.clip_score import ClipScoreStage

# The published state dicts' keys and shapes: sac+logos+ava1-l14-linearMSE.pth and the torch port of
# clip_autokeras_binary_nsfw (what NeMo Curator loads).
REAL_SHAPES = {
    AESTHETIC: {
        "layers.0.weight": (1024, 768),
        "layers.0.bias": (1024,),
        "layers.2.weight": (128, 1024),
        "layers.2.bias": (128,),
        "layers.4.weight": (64, 128),
        "layers.4.bias": (64,),
        "layers.6.weight": (16, 64),
        "layers.6.bias": (16,),
        "layers.7.weight": (1, 16),
        "layers.7.bias": (1,),
    },
    NSFW: {
        "norm.mean": (768,),
        "norm.variance": (768,),
        "linear_1.weight": (64, 768),
        "linear_1.bias": (64,),
        "linear_2.weight": (512, 64),
        "linear_2.bias": (512,),
        "linear_3.weight": (256, 512),
        "linear_3.bias": (256,),
        "linear_4.weight": (1, 256),
        "linear_4.bias": (1,),
    },
}
REAL_CLIP = {"clip_name": "ViT-L-14", "clip_pretrained": "openai"}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))


def real_format_state(kind: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    state = {key: torch.randn(shape, generator=generator) * 0.05 for key, shape in REAL_SHAPES[kind].items()}
    if kind == NSFW:
        state["norm.variance"] = state["norm.variance"].abs() + 0.5
    return state


def expected_scores(kind: str, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The published models' forward passes, written out: aesthetic linear layers without activations;
    NSFW normalisation, three ReLU layers, a sigmoid."""

    def linear(name: str, h: torch.Tensor) -> torch.Tensor:
        return h @ state[f"{name}.weight"].T + state[f"{name}.bias"]

    if kind == AESTHETIC:
        for index in (0, 2, 4, 6, 7):
            x = linear(f"layers.{index}", x)
        return x.squeeze(-1)
    x = (x - state["norm.mean"]) / state["norm.variance"].sqrt()
    for name in ("linear_1", "linear_2", "linear_3"):
        x = torch.relu(linear(name, x))
    return torch.sigmoid(linear("linear_4", x)).squeeze(-1)


@pytest.mark.parametrize("kind", [AESTHETIC, NSFW])
def test_a_real_format_checkpoint_loads_and_scores_as_the_published_model(kind, tmp_path):
    path = tmp_path / f"{kind}.pth"
    state = real_format_state(kind)
    torch.save(state, path)
    predictor = load_predictor(kind, str(path), **REAL_CLIP, input_size=768)
    embeddings = torch.nn.functional.normalize(torch.randn(5, 768, generator=torch.Generator().manual_seed(2)), dim=-1)
    scores = predictors_module.score(predictor, embeddings)
    assert scores == pytest.approx(expected_scores(kind, state, embeddings).tolist(), abs=1e-5)
    if kind == NSFW:
        assert all(0.0 < value < 1.0 for value in scores)
    with pytest.raises(ModelError, match="takes 768-d embeddings but clip_score.model ViT-L-14 gives 1024-d"):
        load_predictor(kind, str(path), **REAL_CLIP, input_size=1024)


def test_a_tiny_checkpoint_cached_for_other_layer_names_is_not_loaded(monkeypatch):
    """The tiny weights' file is named by the architecture's keys: renamed layers get a new file."""
    size = 32
    first = load_predictor(
        AESTHETIC, "sac+logos+ava1-l14-linearMSE", clip_name=TINY_CLIP, clip_pretrained=None, input_size=size
    )
    original = predictors_module.ARCHITECTURES[AESTHETIC]

    def renamed(input_size: int) -> torch.nn.Module:
        model = torch.nn.Module()
        model.head = original(input_size)  # every key now starts with "head."
        model.forward = model.head.forward
        return model

    monkeypatch.setitem(predictors_module.ARCHITECTURES, AESTHETIC, renamed)
    monkeypatch.setitem(predictors_module.FIRST_LAYER, AESTHETIC, "head.layers.0.weight")
    second = load_predictor(
        AESTHETIC, "sac+logos+ava1-l14-linearMSE", clip_name=TINY_CLIP, clip_pretrained=None, input_size=size
    )
    assert list(second.state_dict()) == [f"head.{key}" for key in first.state_dict()]
    assert len(list((models.tiny_dir("predictors")).glob("aesthetic-*.pth"))) == 2


def test_published_names_are_fetched_once_into_the_cache_and_checked(tmp_path, monkeypatch):
    archive = io.BytesIO()
    weights = io.BytesIO()
    torch.save(real_format_state(NSFW), weights)
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("clip_autokeras_binary_nsfw.pth", weights.getvalue())
    served = {"clip_autokeras_binary_nsfw.zip": archive.getvalue(), "linearMSE.pth": b"not the published weights"}
    fetched: list[str] = []

    def urlopen(url, timeout):
        fetched.append(url)
        return io.BytesIO(next(body for name, body in served.items() if url.endswith(name)))

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    for _ in range(2):
        predictor = load_predictor(NSFW, "clip_autokeras_binary_nsfw", **REAL_CLIP, input_size=768)
    assert len(fetched) == 1 and fetched[0].startswith("https://github.com/LAION-AI/CLIP-based-NSFW-Detector/")
    assert predictor.linear_1.weight.shape == (64, 768)
    assert (tmp_path / "cache" / "predictors" / "clip_autokeras_binary_nsfw.pth").is_file()

    with pytest.raises(ModelError, match="published checksum"):
        load_predictor(AESTHETIC, "sac+logos+ava1-l14-linearMSE", **REAL_CLIP, input_size=768)
    assert not (tmp_path / "cache" / "predictors" / "sac+logos+ava1-l14-linearMSE.pth").exists()
    with pytest.raises(ModelError, match="takes embeddings of open_clip ViT-L-14 \\(openai\\), not of ViT-H-14"):
        load_predictor(
            AESTHETIC,
            "sac+logos+ava1-l14-linearMSE",
            clip_name="ViT-H-14",
            clip_pretrained="laion2b_s32b_b79k",
            input_size=1024,
        )
    assert len(fetched) == 2  # the mismatched CLIP model was refused before any download


def keyframes() -> list[Frame]:
    """Three generated keyframes, the first and last the same picture."""
    frames = []
    for index, color in enumerate([(220, 20, 20), (20, 200, 40), (220, 20, 20)]):
        buffer = io.BytesIO()
        Image.new("RGB", (96, 64), color).save(buffer, format="JPEG", quality=90)
        frames.append(Frame(clip_idx=0, frame_idx=index, t_s=float(index), width=96, height=64, jpeg=buffer.getvalue()))
    return frames


def test_the_clip_stage_scores_every_keyframe_from_its_embedding_and_the_frames_table_keeps_them(monkeypatch):
    loads: list[str] = []
    real_load = predictors_module.load_predictor

    def counted(kind, *args, **kwargs):
        loads.append(kind)
        return real_load(kind, *args, **kwargs)

    monkeypatch.setattr("cosmo_data.stages.clip_score.load_predictor", counted)
    config = BuildConfig.model_validate(
        {"clip_score": {"model": TINY_CLIP, "pretrained": None, "resources": {"gpus": 0, "batch_size": 4}}}
    )
    stage = ClipScoreStage(config)
    stage.setup()
    records = []
    for index in range(2):
        document = Document(f"v{index}", [Sentence("a red wall", 0.0, 1.0, "asr")])
        records.append(VideoRecord(f"v{index}", f"v{index}.mp4", index, frames=keyframes(), document=document))
    stage.process(records[:1])
    stage.process(records[1:])
    assert loads == [AESTHETIC, NSFW]  # once, in setup: tiny predictors for the tiny CLIP's 32-d embeddings
    assert stage.predictors[NSFW].linear_1.weight.shape == (64, 32)

    frames = records[0].frames
    assert records[0].status == OK
    assert all(isinstance(f.aesthetic, float) and 0.0 < f.nsfw < 1.0 for f in frames)
    assert frames[0].aesthetic == frames[2].aesthetic and frames[0].aesthetic != frames[1].aesthetic
    assert [f.aesthetic for f in records[1].frames] == [f.aesthetic for f in frames]  # reruns agree
    rows = table_rows(records[:1])["frames"]
    assert [(row["aesthetic"], row["nsfw"]) for row in rows] == [(f.aesthetic, f.nsfw) for f in frames]
