"""CLIP similarity of every document image against every document sentence (MMC4's matrix).

Runs after the document stage and before assignment: record.document.similarity[i][j] is the cosine
similarity of image i (record.frames[document.image_frames[i]]) and sentence j, in [-1, 1].
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cosmo_data.models import OpenClipModel, load_open_clip, no_grad, pick_device
from cosmo_data.models.predictors import AESTHETIC, NSFW, embedding_size, load_predictor, score
from cosmo_data.schemas.config import BuildConfig
from cosmo_data.schemas.records import CLIP_SCORE_FAILED, Frame, VideoRecord
from cosmo_data.stages.base import process_batched, resources_from
from cosmo_data.stages.caption import open_frame

if TYPE_CHECKING:  # torch is imported where it is used: the build's driver never needs it
    import torch

SIMILARITY_DECIMALS = 4


class ClipScoreStage:
    name = "clip_score"

    def __init__(self, config: BuildConfig):
        self.config = config.clip_score
        resources = config.clip_score.resources
        self.resources = resources_from(resources)
        self.batch_size = resources.batch_size
        self.clip: OpenClipModel | None = None
        self.predictors: dict[str, torch.nn.Module] = {}

    def setup(self) -> None:
        device = pick_device(self.config.resources)
        self.clip = load_open_clip(self.config.model, self.config.pretrained, device, self.config.fp16)
        # LAION's aesthetic and NSFW MLPs, over the image embeddings computed below (CPU: a few MFLOPs a frame).
        for kind, reference in ((AESTHETIC, self.config.aesthetic_model), (NSFW, self.config.nsfw_model)):
            if reference is not None:
                self.predictors[kind] = load_predictor(
                    kind,
                    reference,
                    clip_name=self.config.model,
                    clip_pretrained=self.config.pretrained,
                    input_size=embedding_size(self.clip.model),
                )

    def process(self, batch: list[VideoRecord]) -> list[VideoRecord]:
        return process_batched(batch, self._score, stage=self.name, failure_status=CLIP_SCORE_FAILED)

    def _score(self, records: list[VideoRecord]) -> None:
        scored = [r for r in records if r.document is not None and r.document.sentences and r.frames]
        if not scored:
            return
        # A document that has not chosen its images yet is scored on all keyframes.
        image_frames = [r.document.image_frames or list(range(len(r.frames))) for r in scored]
        # Decoded a forward pass at a time (images_per_forward), never all of a call's videos at once.
        images = [(record, record.frames[k]) for record, indices in zip(scored, image_frames) for k in indices]
        texts = [sentence.text for record in scored for sentence in record.document.sentences]
        image_embeddings = self._embed_images(images)
        # Stored (the embeddings table) for `cosmo-data dedup`: float16 halves them, and cosine
        # similarities near the 0.9-0.98 thresholds move by < 1e-4 (768-d, measured).
        for (_, frame), vector in zip(images, image_embeddings.half().numpy()):
            frame.embedding = vector.astype("<f2").tobytes()
        self._predict(images, image_embeddings)
        text_embeddings = self._embed_texts(texts)
        similarities = []
        image_at = text_at = 0
        for record, indices in zip(scored, image_frames):
            n_images, n_texts = len(indices), len(record.document.sentences)
            block = image_embeddings[image_at : image_at + n_images] @ text_embeddings[text_at : text_at + n_texts].T
            # Rounded: batched matmuls differ in the last float bits with batch composition, which
            # depends on scheduling; reruns must give the same matrix and so the same assignment.
            similarities.append(
                block.clamp(-1.0, 1.0).mul(10**SIMILARITY_DECIMALS).round().div(10**SIMILARITY_DECIMALS).tolist()
            )
            image_at, text_at = image_at + n_images, text_at + n_texts
        for record, indices, similarity in zip(scored, image_frames, similarities):
            record.document.image_frames = indices
            record.document.similarity = similarity

    def _predict(self, images: list[tuple[VideoRecord, Frame]], embeddings: torch.Tensor) -> None:
        """Each keyframe's aesthetic score and NSFW probability, rounded (like the similarities) so that
        reruns store the same values whatever the batch composition. The kinds name Frame's fields."""
        for kind, predictor in self.predictors.items():
            for (_, frame), value in zip(images, score(predictor, embeddings)):
                setattr(frame, kind, round(value, SIMILARITY_DECIMALS))

    @no_grad
    def _embed_images(self, images: list[tuple[VideoRecord, Frame]]) -> torch.Tensor:
        import torch

        clip, per_forward = self.clip, self.config.images_per_forward
        chunks = []
        for start in range(0, len(images), per_forward):
            chunk = images[start : start + per_forward]
            pixels = torch.stack([clip.preprocess(open_frame(r, f, CLIP_SCORE_FAILED)) for r, f in chunk])
            chunks.append(clip.model.encode_image(pixels.to(clip.device, clip.dtype)).float())
        return torch.nn.functional.normalize(torch.cat(chunks).cpu(), dim=-1)

    @no_grad
    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        import torch

        clip, per_forward = self.clip, self.config.sentences_per_forward
        chunks = []
        for start in range(0, len(texts), per_forward):
            tokens = clip.tokenizer(texts[start : start + per_forward])
            chunks.append(clip.model.encode_text(tokens.to(clip.device)).float())
        return torch.nn.functional.normalize(torch.cat(chunks).cpu(), dim=-1)
