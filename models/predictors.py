"""LAION's image predictors over CLIP image embeddings: small MLPs, so a keyframe is scored from the
embedding the CLIP stage computes anyway (no second image pass).

- Aesthetic: christophschuhmann/improved-aesthetic-predictor, `sac+logos+ava1-l14-linearMSE.pth`: a
  stack of linear layers without activations (dropout between them at training time) over the
  L2-normalised OpenAI ViT-L/14 image embedding; a mean opinion score, about 1-10.
- NSFW: LAION-AI/CLIP-based-NSFW-Detector's ViT-L/14 detector. It was trained with AutoKeras and ships
  as a Keras model; its authors also published it as a torch state dict (the repository's issue 7;
  NVIDIA NeMo Curator loads that one): a feature normalisation (the Keras Normalization layer's mean
  and variance), three ReLU layers and a sigmoid; the probability that the image is NSFW.

Both published checkpoints take 768-d embeddings of OpenAI's ViT-L-14. A real checkpoint, one named by
path, and the tiny random ones (created for tiny CLIP models, at their embedding size) all load through
load_predictor: the architecture is built at the input size the state dict holds and loaded strictly.
"""

from __future__ import annotations

import hashlib
import io
import json
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cosmo_data.models import (
    TINY_OPEN_CLIP_CONFIGS,
    ModelError,
    _load_error,
    _seeded,
    cache_dir,
    create_once,
    tiny_dir,
)

if TYPE_CHECKING:
    import torch

AESTHETIC = "aesthetic"
NSFW = "nsfw"
# The CLIP model the published weights were trained on (open_clip name, pretrained tag).
PUBLISHED_FOR = ("ViT-L-14", "openai")
PUBLISHED_INPUT_SIZE = 768
DOWNLOAD_TIMEOUT_S = 120


@dataclass(frozen=True)
class Published:
    url: str
    # The .pth file itself, or its name inside the zip the URL serves.
    filename: str
    md5: str | None = None


PUBLISHED: dict[str, dict[str, Published]] = {
    AESTHETIC: {
        "sac+logos+ava1-l14-linearMSE": Published(
            "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
            "sac%2Blogos%2Bava1-l14-linearMSE.pth",
            "sac+logos+ava1-l14-linearMSE.pth",
            md5="b1047fd767a00134b8fd6529bf19521a",
        ),
    },
    NSFW: {
        "clip_autokeras_binary_nsfw": Published(
            "https://github.com/LAION-AI/CLIP-based-NSFW-Detector/files/10250461/clip_autokeras_binary_nsfw.zip",
            "clip_autokeras_binary_nsfw.pth",
        ),
    },
}


def _aesthetic_mlp(input_size: int) -> torch.nn.Module:
    """improved-aesthetic-predictor's MLP; the state dict's keys are `layers.<index>.*` of its Sequential
    (dropout layers hold none), so the layers and their order must stay as they are."""
    from torch import nn

    class AestheticMlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.Sequential(
                nn.Linear(input_size, 1024),
                nn.Dropout(0.2),
                nn.Linear(1024, 128),
                nn.Dropout(0.2),
                nn.Linear(128, 64),
                nn.Dropout(0.1),
                nn.Linear(64, 16),
                nn.Linear(16, 1),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layers(x)

    return AestheticMlp()


def _nsfw_mlp(input_size: int) -> torch.nn.Module:
    """The torch port of the L/14 NSFW detector: keys norm.mean, norm.variance, linear_1..linear_4."""
    import torch
    from torch import nn

    class Normalization(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", torch.zeros(input_size))
            self.register_buffer("variance", torch.ones(input_size))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x - self.mean) / self.variance.sqrt()

    class NsfwDetector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = Normalization()
            self.linear_1 = nn.Linear(input_size, 64)
            self.linear_2 = nn.Linear(64, 512)
            self.linear_3 = nn.Linear(512, 256)
            self.linear_4 = nn.Linear(256, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.linear_1(self.norm(x)))
            x = torch.relu(self.linear_3(torch.relu(self.linear_2(x))))
            return torch.sigmoid(self.linear_4(x))

    return NsfwDetector()


ARCHITECTURES: dict[str, Callable[[int], torch.nn.Module]] = {AESTHETIC: _aesthetic_mlp, NSFW: _nsfw_mlp}
# The state dict entry whose second dimension is the input size.
FIRST_LAYER = {AESTHETIC: "layers.0.weight", NSFW: "linear_1.weight"}


def embedding_size(clip_model: torch.nn.Module) -> int:
    """The width of an open_clip model's image embedding."""
    return int(clip_model.visual.output_dim)


def _tiny_checkpoint(kind: str, input_size: int) -> Path:
    """Tiny random weights, in a file named by the architecture's keys and shapes: a checkpoint cached
    by a version of this code whose layers were named otherwise is never loaded (it broke builds)."""
    import torch

    with _seeded():
        model = ARCHITECTURES[kind](input_size)
    layout = json.dumps(sorted((key, list(value.shape)) for key, value in model.state_dict().items()))
    digest = hashlib.sha1(layout.encode()).hexdigest()[:10]
    return create_once(
        tiny_dir("predictors") / f"{kind}-{input_size}-{digest}.pth", lambda path: torch.save(model.state_dict(), path)
    )


def published_checkpoint(kind: str, name: str) -> Path:
    """The published weights in the model cache, fetched from their URL the first time."""
    published = PUBLISHED[kind][name]

    def write(path: Path) -> None:
        with urllib.request.urlopen(published.url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            data = response.read()
        if published.url.endswith(".zip"):
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                member = next(n for n in archive.namelist() if Path(n).name == published.filename)
                data = archive.read(member)
        if published.md5 and hashlib.md5(data).hexdigest() != published.md5:
            raise ValueError(f"{published.url} does not have the published checksum md5 {published.md5}")
        path.write_bytes(data)

    try:
        return create_once(cache_dir() / "predictors" / published.filename, write)
    except Exception as exc:  # URLError, a zip without the file, a checksum mismatch
        raise _load_error(f"{kind} predictor {name!r} from {published.url}", exc) from exc


def _checkpoint(kind: str, reference: str, clip_name: str, clip_pretrained: str | None, input_size: int) -> Path:
    if reference in PUBLISHED[kind]:
        if clip_name in TINY_OPEN_CLIP_CONFIGS:
            return _tiny_checkpoint(kind, input_size)
        if (clip_name, clip_pretrained) != PUBLISHED_FOR:
            raise ModelError(
                f"clip_score.{kind}_model {reference!r} takes embeddings of open_clip {PUBLISHED_FOR[0]} "
                f"({PUBLISHED_FOR[1]}), not of {clip_name} ({clip_pretrained}); set clip_score.{kind}_model "
                "to null or to a checkpoint trained on this CLIP model"
            )
        return published_checkpoint(kind, reference)
    if not Path(reference).is_file():
        raise ModelError(
            f"clip_score.{kind}_model {reference!r} is neither a published predictor "
            f"({', '.join(PUBLISHED[kind])}) nor a checkpoint file"
        )
    return Path(reference)


def load_predictor(
    kind: str, reference: str, *, clip_name: str, clip_pretrained: str | None, input_size: int
) -> torch.nn.Module:
    """The predictor `kind` (AESTHETIC or NSFW) for embeddings of input_size, on the CPU, in eval mode:
    a published name, a checkpoint file, or for a tiny CLIP model tiny random weights."""
    import torch

    path = _checkpoint(kind, reference, clip_name, clip_pretrained, input_size)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = ARCHITECTURES[kind](state[FIRST_LAYER[kind]].shape[1])
        model.load_state_dict(state)
    except Exception as exc:  # not a state dict of this architecture
        raise _load_error(f"{kind} predictor {reference!r} ({path})", exc) from exc
    checkpoint_size = state[FIRST_LAYER[kind]].shape[1]
    if checkpoint_size != input_size:
        raise ModelError(
            f"{kind} predictor {reference!r} takes {checkpoint_size}-d embeddings but clip_score.model "
            f"{clip_name} gives {input_size}-d ones"
        )
    return model.eval()


def score(predictor: torch.nn.Module, embeddings: torch.Tensor) -> list[float]:
    """One score per L2-normalised embedding (rows), as the predictors were trained on them."""
    import torch

    with torch.no_grad():
        return predictor(embeddings.float()).squeeze(-1).tolist()


def fetch_predictors(clip_name: str, clip_pretrained: str | None, aesthetic: str | None, nsfw: str | None) -> list[str]:
    """`cosmo-data models`: the configured published predictors fetched into the cache and loaded once
    (tiny ones are made at build time). One line per predictor."""
    fetched = []
    for kind, reference in ((AESTHETIC, aesthetic), (NSFW, nsfw)):
        if reference in PUBLISHED[kind] and clip_name not in TINY_OPEN_CLIP_CONFIGS:
            load_predictor(
                kind, reference, clip_name=clip_name, clip_pretrained=clip_pretrained, input_size=PUBLISHED_INPUT_SIZE
            )
            fetched.append(f"clip_score: {kind} predictor {reference} ({published_checkpoint(kind, reference)})")
    return fetched
