"""COSMO: a frozen vision tower, a perceiver resampler and a causal LM split in two.

The LM's lower `unimodal_depth` layers see text only; their output, pooled by a learned query, is the
text side of the contrastive loss. Above them, a Flamingo gated cross-attention block runs before
every `interval_layer`-th layer: text tokens attend to the resampled visual tokens of their own media
only (the media whose <visual>/<image> mark comes last before them), through tanh gates that start at
0 so training begins from the unchanged LM. Loss = next-token loss + weight x contrastive loss between
pooled visual tokens and the unimodal text embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from cosmo_data.train.config import TrainConfig, TrainError
from cosmo_data.train.weights import Pretrained


def _feed_forward(dim: int, mult: int) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(), nn.Linear(dim * mult, dim, bias=False)
    )


class PerceiverAttention(nn.Module):
    """Latents attend to the inputs and to themselves (Flamingo's resampler attention)."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm_inputs, self.norm_latents = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim_head * heads, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim_head * heads, bias=False)
        self.to_out = nn.Linear(dim_head * heads, dim, bias=False)

    def forward(self, inputs: torch.Tensor, latents: torch.Tensor, input_mask: torch.Tensor) -> torch.Tensor:
        """inputs [B, N, D], latents [B, L, D], input_mask [B, N] (True where an input is real)."""
        inputs, latents = self.norm_inputs(inputs), self.norm_latents(latents)
        keys = torch.cat([inputs, latents], dim=1)
        mask = torch.cat([input_mask, input_mask.new_ones(latents.shape[:2])], dim=1)
        q = self._heads(self.to_q(latents))
        k, v = (self._heads(t) for t in self.to_kv(keys).chunk(2, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return self.to_out(out.transpose(1, 2).flatten(2))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)


class PerceiverResampler(nn.Module):
    """A media's frames x patch tokens -> a fixed number of latents, with a learned time embedding per frame."""

    def __init__(
        self, dim: int, depth: int, dim_head: int, heads: int, num_latents: int, max_frames: int, ff_mult: int = 4
    ):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * dim**-0.5)
        self.frame_embeddings = nn.Parameter(torch.zeros(max_frames, dim))
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), _feed_forward(dim, ff_mult)]) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """tokens [B, M, F, P, D], frame_mask [B, M, F] -> latents [B, M, L, D]."""
        batch, media, frames, patches, dim = tokens.shape
        tokens = tokens + self.frame_embeddings[:frames, None, :]
        inputs = tokens.reshape(batch * media, frames * patches, dim)
        mask = frame_mask.reshape(batch * media, frames, 1).expand(-1, -1, patches).reshape(batch * media, -1)
        latents = self.latents.expand(batch * media, -1, -1)
        for attention, feed_forward in self.layers:
            latents = attention(inputs, latents, mask) + latents
            latents = feed_forward(latents) + latents
        return self.norm(latents).reshape(batch, media, -1, dim)


@dataclass
class MediaContext:
    """What the cross-attention layers read during one forward pass of the LM."""

    visual: torch.Tensor | None = None  # [B, M, L, Dv]
    media_valid: torch.Tensor | None = None  # [B, M]
    text_media_index: torch.Tensor | None = None  # [B, T]: 1 + index of the last media mark at or before, 0 if none


class GatedCrossAttentionBlock(nn.Module):
    def __init__(self, dim: int, dim_visual: int, dim_head: int, heads: int, ff_mult: int, only_immediate: bool):
        super().__init__()
        self.heads, self.only_immediate = heads, only_immediate
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim_head * heads, bias=False)
        self.to_kv = nn.Linear(dim_visual, 2 * dim_head * heads, bias=False)
        self.to_out = nn.Linear(dim_head * heads, dim, bias=False)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.feed_forward = _feed_forward(dim, ff_mult)
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(
        self, text: torch.Tensor, visual: torch.Tensor, media_valid: torch.Tensor, text_media_index: torch.Tensor
    ) -> torch.Tensor:
        """text [B, T, D], visual [B, M, L, Dv], media_valid [B, M], text_media_index [B, T] (MediaContext)."""
        batch, media, latents, _ = visual.shape
        q = self.to_q(self.norm(text)).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        keys = visual.to(q.dtype).reshape(batch, media * latents, -1)
        k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in self.to_kv(keys).chunk(2, dim=-1))
        media_of_key = torch.arange(1, media + 1, device=text.device).repeat_interleave(latents)
        text_index = text_media_index[:, :, None]
        allowed = text_index == media_of_key if self.only_immediate else text_index >= media_of_key
        allowed = allowed & media_valid.repeat_interleave(latents, dim=1)[:, None, :]
        has_media = allowed.any(dim=-1, keepdim=True)
        # Tokens before any media attend to nothing: give them a harmless full row, then zero their output.
        mask = allowed | ~has_media
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
        attended = self.to_out(attended.transpose(1, 2).flatten(2)) * has_media
        text = text + attended * self.attn_gate.tanh()
        return text + self.feed_forward(text) * self.ff_gate.tanh()


class CrossAttentionDecoderLayer(nn.Module):
    """An LM decoder layer with a gated cross-attention block run on its input first."""

    def __init__(self, decoder_layer: nn.Module, block: GatedCrossAttentionBlock, context: MediaContext):
        super().__init__()
        self.decoder_layer, self.cross_attention = decoder_layer, block
        self.context = context
        self.checkpointing = False

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        # The media go in as arguments: a checkpointed block is recomputed in backward, after the context is cleared.
        media = (self.context.visual, self.context.media_valid, self.context.text_media_index)
        if self.checkpointing and self.training:
            hidden_states = checkpoint(self.cross_attention, hidden_states, *media, use_reentrant=False)
        else:
            hidden_states = self.cross_attention(hidden_states, *media)
        return self.decoder_layer(hidden_states, *args, **kwargs)


_DECODER_LAYER_PATHS = ("model.decoder.layers", "model.layers", "transformer.h", "gpt_neox.layers")


def decoder_layers(lm: nn.Module) -> nn.ModuleList:
    """The decoder's layer list for the usual Hugging Face causal LMs (OPT, Llama-likes, GPT-2, NeoX)."""
    for path in _DECODER_LAYER_PATHS:
        node = lm
        for name in path.split("."):
            node = getattr(node, name, None)
        if isinstance(node, nn.ModuleList):
            return node
    raise TrainError(
        f"cannot find the decoder layers of {type(lm).__name__} (looked at {', '.join(_DECODER_LAYER_PATHS)})"
    )


@dataclass
class Output:
    loss: torch.Tensor
    lm_loss: torch.Tensor
    contrastive_loss: torch.Tensor
    text_latents: torch.Tensor  # [B, latent], normalized
    visual_latents: torch.Tensor  # [B, latent], normalized


class CosmoModel(nn.Module):
    def __init__(self, pretrained: Pretrained, config: TrainConfig):
        super().__init__()
        head, language = config.head, config.language
        self.vision = pretrained.vision.eval().requires_grad_(False)
        self.lm = pretrained.lm.requires_grad_(False)
        if language.train_embeddings:
            self.lm.get_input_embeddings().requires_grad_(True)
        self.register_buffer("media_token_ids", torch.tensor(pretrained.media_token_ids), persistent=False)
        self.register_buffer("pixel_mean", torch.tensor(pretrained.pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pretrained.pixel_std).view(3, 1, 1), persistent=False)
        self.contrastive_weight = head.contrastive_weight
        self.temperature = head.contrastive_temperature

        image_size = pretrained.vision.image_size
        with torch.no_grad():
            _, tokens = self.vision(
                torch.zeros(1, 3, *((image_size,) * 2 if isinstance(image_size, int) else image_size))
            )
        self.patches, vision_dim = tokens.shape[1], tokens.shape[2]
        text_dim = self.lm.get_input_embeddings().embedding_dim

        self.resampler = PerceiverResampler(
            vision_dim, head.perceiver_depth, head.perceiver_dim_head, head.perceiver_heads,
            head.perceiver_latents, head.max_frames,
        )  # fmt: skip
        layers = decoder_layers(self.lm)
        if not 0 < language.unimodal_depth < len(layers):
            raise TrainError(
                f"language.unimodal_depth must be 1..{len(layers) - 1} for this LM of {len(layers)} layers"
            )
        self.context = MediaContext()
        for index in range(language.unimodal_depth, len(layers), language.interval_layer):
            block = GatedCrossAttentionBlock(
                text_dim, vision_dim, head.xattn_dim_head, head.xattn_heads, head.xattn_ff_mult,
                head.only_attend_immediate_media,
            )  # fmt: skip
            layers[index] = CrossAttentionDecoderLayer(layers[index], block, self.context)
        self._unimodal_output: torch.Tensor | None = None
        layers[language.unimodal_depth - 1].register_forward_hook(self._keep_unimodal_output)

        # COSMO's text side: a learned query attends over the unimodal layers' output.
        self.text_query = nn.Parameter(torch.randn(1, text_dim) * text_dim**-0.5)
        self.text_pool = PerceiverAttention(text_dim, head.xattn_dim_head, head.xattn_heads)
        self.text_pool_ff = _feed_forward(text_dim, 4)
        self.text_norm = nn.LayerNorm(text_dim)
        self.text_to_latent = nn.Linear(text_dim, head.latent_dim, bias=False)
        self.visual_to_latent = nn.Linear(vision_dim, head.latent_dim, bias=False)

    def train(self, mode: bool = True) -> CosmoModel:
        super().train(mode)
        self.vision.eval()  # frozen: its norms and dropouts always run as at inference
        return self

    def enable_activation_checkpointing(self) -> None:
        if hasattr(self.lm, "activation_checkpointing_enable"):  # transformers 5's name for it
            self.lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        for module in self.modules():
            if isinstance(module, CrossAttentionDecoderLayer):
                module.checkpointing = True

    def _keep_unimodal_output(self, module: nn.Module, inputs: tuple, output) -> None:
        self._unimodal_output = output[0] if isinstance(output, tuple) else output

    def encode_media(self, media: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """media [B, M, F, 3, H, W] uint8, frame_mask [B, M, F] -> resampled visual tokens [B, M, L, Dv].
        Only real frames go through the frozen tower, scaled and normalized as open_clip's ToTensor + Normalize."""
        with torch.no_grad():
            pixels = (media[frame_mask].float() / 255 - self.pixel_mean) / self.pixel_std
            _, tokens = self.vision(pixels)
        grid = tokens.new_zeros(*frame_mask.shape, *tokens.shape[1:])
        grid[frame_mask] = tokens
        return self.resampler(grid, frame_mask)

    def forward(self, batch: dict[str, torch.Tensor]) -> Output:
        frame_mask = batch["frame_mask"]
        media_valid = frame_mask.any(dim=-1)
        visual = self.encode_media(batch["media"], frame_mask)
        input_ids = batch["input_ids"]
        self.context.visual = visual
        self.context.media_valid = media_valid
        self.context.text_media_index = torch.isin(input_ids, self.media_token_ids).cumsum(dim=-1)
        try:
            lm_loss = self.lm(
                input_ids=input_ids, attention_mask=batch["attention_mask"], labels=batch["labels"], use_cache=False
            ).loss
            text_states = self._unimodal_output
        finally:
            self.context.visual = self.context.media_valid = self.context.text_media_index = None
            self._unimodal_output = None

        query = self.text_query.expand(text_states.shape[0], -1, -1)
        pooled = self.text_pool(text_states, query, batch["attention_mask"].bool()) + query
        pooled = self.text_pool_ff(pooled) + pooled
        text_latents = F.normalize(self.text_to_latent(self.text_norm(pooled[:, 0])), dim=-1)
        weights = media_valid[:, :, None, None].to(visual.dtype)
        visual_mean = (visual * weights).sum(dim=(1, 2)) / (weights.sum(dim=(1, 2)) * visual.shape[2]).clamp(min=1)
        visual_latents = F.normalize(self.visual_to_latent(visual_mean), dim=-1)
        contrastive_loss = contrastive(text_latents, visual_latents, self.temperature)
        loss = lm_loss + self.contrastive_weight * contrastive_loss
        return Output(loss, lm_loss, contrastive_loss, text_latents.detach(), visual_latents.detach())


def contrastive(text_latents: torch.Tensor, visual_latents: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE over the micro-batch (COSMO's default "single_gpu" gathering)."""
    logits = text_latents.float() @ visual_latents.float().t() / temperature
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def retrieval_recall(
    text_latents: torch.Tensor, visual_latents: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """Recall@k of clip->sentence and sentence->clip retrieval, pairs matched by row."""
    similarity = text_latents.float() @ visual_latents.float().t()
    truth = torch.arange(similarity.shape[0])
    recalls = {}
    for direction, scores in (("text_to_visual", similarity), ("visual_to_text", similarity.t())):
        ranked = scores.argsort(dim=1, descending=True)
        for k in ks:
            hits = (ranked[:, :k] == truth[:, None]).any(dim=1).float().mean().item()
            recalls[f"{direction}_r@{k}"] = hits
    return recalls
