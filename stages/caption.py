"""One caption per keyframe, batched across the keyframes of all videos in a batch.

Two backends behind one small interface (caption(images) -> one string per image):
"open_clip" runs a CoCa model, "hf" any transformers image-to-text model (BLIP, BLIP-2, GIT, ...).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Protocol

from PIL import Image

from cosmo_data.models import (
    ModelError,
    OpenClipModel,
    load_hf_captioner,
    load_open_clip,
    no_grad,
    pick_device,
)
from cosmo_data.schemas.config import BuildConfig
from cosmo_data.schemas.records import CAPTION_FAILED, Frame, VideoFailure, VideoRecord
from cosmo_data.stages.base import process_batched, resources_from

if TYPE_CHECKING:  # torch is imported where it is used: the build's driver never needs it
    import torch


class Captioner(Protocol):
    def caption(self, images: list[Image.Image]) -> list[str]:
        """One caption per image, same order."""


class CocaCaptioner:
    """Greedy decoding with an open_clip CoCa model.

    CoCa.generate() needs transformers' BeamSearchScorer, which transformers 5 removed, so the
    decoding loop is written here against CoCa's own forward pass (image embeddings computed once).
    """

    def __init__(self, loaded: OpenClipModel, max_tokens: int, min_tokens: int = 5):
        if not hasattr(loaded.model, "text_decoder"):
            raise ModelError(f"open_clip model {loaded.name!r} cannot caption: only CoCa models have a text decoder")
        self.loaded = loaded
        self.sot, self.eot = loaded.tokenizer.sot_token_id, loaded.tokenizer.eot_token_id
        # Tokens after the start token must fit the decoder's context.
        self.max_tokens = min(max_tokens, loaded.model.context_length - 1)
        # End-of-text is held back for the first tokens, as open_clip's CoCa.generate does.
        self.min_tokens = min_tokens

    @no_grad
    def caption(self, images: list[Image.Image]) -> list[str]:
        import torch

        model, device = self.loaded.model, self.loaded.device
        pixels = torch.stack([self.loaded.preprocess(image) for image in images]).to(device, self.loaded.dtype)
        encoded = model(pixels)  # without text, CoCa returns the image embeddings the decoder attends to
        image_latent, image_embs = encoded["image_features"], encoded["image_embs"]
        tokens = torch.full((len(images), 1), self.sot, dtype=torch.long, device=device)
        finished = torch.zeros(len(images), dtype=torch.bool, device=device)
        for step in range(self.max_tokens):
            logits = model(pixels, tokens, image_latent=image_latent, image_embs=image_embs, output_labels=False)[
                "logits"
            ][:, -1]
            if step < self.min_tokens:
                logits[:, self.eot] = float("-inf")
            next_tokens = logits.argmax(dim=-1).masked_fill(finished, self.eot)
            tokens = torch.cat([tokens, next_tokens[:, None]], dim=1)
            finished |= next_tokens == self.eot
            if finished.all():
                break
        return [self._text(row.tolist()[1:]) for row in tokens]

    def _text(self, ids: list[int]) -> str:
        if self.eot in ids:
            ids = ids[: ids.index(self.eot)]
        text = self.loaded.tokenizer.decode(ids)
        return " ".join(text.replace("<start_of_text>", "").replace("<end_of_text>", "").split())


class HfCaptioner:
    """transformers image-to-text: processor + generate, with an optional text prompt."""

    def __init__(self, processor, model: torch.nn.Module, prompt: str | None, max_tokens: int):
        self.processor, self.model = processor, model
        self.prompt = prompt
        self.max_tokens = max_tokens

    @no_grad
    def caption(self, images: list[Image.Image]) -> list[str]:
        prompts = [self.prompt] * len(images) if self.prompt else None
        inputs = self.processor(images=images, text=prompts, return_tensors="pt").to(self.model.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        output = self.model.generate(**inputs, max_new_tokens=self.max_tokens)
        texts = self.processor.batch_decode(output, skip_special_tokens=True)
        return [self._without_prompt(text.strip()) for text in texts]

    def _without_prompt(self, text: str) -> str:
        # Encoder-decoder captioners (BLIP) echo the prompt; decoder-only ones return new text only.
        if self.prompt and text.lower().startswith(self.prompt.strip().lower()):
            return text[len(self.prompt.strip()) :].strip()
        return text


def open_frame(record: VideoRecord, frame: Frame, failure_status: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(frame.jpeg)) as image:
            return image.convert("RGB")
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError or SyntaxError on bad data
        raise VideoFailure(
            failure_status, f"keyframe {frame.frame_idx} of {record.source} is not a readable JPEG: {exc}"
        ) from exc


class CaptionStage:
    """Fills record.frames[i].caption for every keyframe of every ok record."""

    name = "caption"

    def __init__(self, config: BuildConfig):
        self.config = config.caption
        resources = config.caption.resources
        self.resources = resources_from(resources)
        self.batch_size = resources.batch_size
        self.captioner: Captioner | None = None

    def setup(self) -> None:
        config, device = self.config, pick_device(self.config.resources)
        if config.backend == "open_clip":
            loaded = load_open_clip(config.model, config.pretrained, device, config.fp16)
            self.captioner = CocaCaptioner(loaded, config.max_tokens)
        else:
            processor, model = load_hf_captioner(config.model, device, config.fp16)
            self.captioner = HfCaptioner(processor, model, config.prompt, config.max_tokens)

    def process(self, batch: list[VideoRecord]) -> list[VideoRecord]:
        return process_batched(batch, self._caption, stage=self.name, failure_status=CAPTION_FAILED)

    def _caption(self, records: list[VideoRecord]) -> None:
        # resources.batch_size videos per call, at up to max_per_video keyframes each: decoded at once they
        # were thousands of images. Each forward pass's keyframes are decoded just before it instead.
        keyframes = [(record, frame) for record in records for frame in record.frames]
        per_forward = self.config.images_per_forward
        captions: list[str] = []
        for start in range(0, len(keyframes), per_forward):
            chunk = keyframes[start : start + per_forward]
            captions.extend(self.captioner.caption([open_frame(r, f, CAPTION_FAILED) for r, f in chunk]))
        for (_, frame), caption in zip(keyframes, captions, strict=True):
            frame.caption = caption
