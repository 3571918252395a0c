"""Training batches: resampled shards streamed with webdataset, in a position that can be restored.

Each rank runs `workers` DataLoader workers (or its main process when workers is 0); each worker plays
one *role* and builds whole micro-batches from a stream of its own:
  - sample n of a role picks its source by weight with random.Random("{seed}/{rank}/{role}/sample/{n}"),
    which also drives the sample's own draws (COSMO's clip window and frames);
  - each source is an endless sequence of shard draws: draw d streams the tar chosen by
    random.Random("{seed}/{rank}/{role}/{source}/{d}") from start to end (sampling shards with
    replacement, as webdataset's resampled shards do; samples of a tar come in tar order).
A role's position is therefore a few integers: samples drawn, skipped samples, per source
(draw, samples read in that draw's tar), its skips by reason and its current skip window. Every batch carries its role's position after it was built;
the trainer keeps the position of the last batch it consumed from each role and checkpoints those.
On resume a role restarts its draws from there, re-reading (without decoding) the samples of the
current tar before its offset. The DataLoader hands out batches round-robin over its workers, so
after B consumed batches worker w of the new loader plays role (w + B) % workers: batches come in the
same order as in an uninterrupted run, and prefetched batches lost at the stop are built again.
"""

from __future__ import annotations

import copy
import random
import tarfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import tarfile_samples

from cosmo_data.train.config import DataConfig, TrainError
from cosmo_data.train.samples import DECODERS, SKIP_REASONS, BadSample, Example
from cosmo_data.train.shards import ShardSource


class Collator:
    """Examples -> fixed-shape tensors: tokens cut to max_tokens, frames through the tower's transform up
    to its ToTensor, as uint8 pixels (the model scales and normalizes them on its device)."""

    def __init__(
        self, tokenizer: Any, to_pixels: Any, data: DataConfig, media_token_ids: tuple[int, ...], image_size: int
    ):
        self.tokenizer, self.to_pixels, self.data = tokenizer, to_pixels, data
        self.media_token_ids = torch.tensor(media_token_ids)
        self.image_size = image_size

    def encode(self, example: Example) -> dict[str, torch.Tensor]:
        ids = self.tokenizer(example.text, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([self.tokenizer.bos_token_id, *ids, self.tokenizer.eos_token_id])[: self.data.max_tokens]
        is_media = torch.isin(ids, self.media_token_ids)
        kept_media = int(is_media.sum())
        if kept_media == 0:
            raise BadSample("no media mark within max_tokens", "no_media")
        if kept_media > len(example.media):
            raise BadSample(f"{kept_media} media marks for {len(example.media)} media", "no_media")
        media = example.media[:kept_media]
        frames = [torch.stack([self._pixels(frame) for frame in clip[: self.data.frames_per_clip]]) for clip in media]
        return {"input_ids": ids, "is_media": is_media, "frames": frames}

    def _pixels(self, frame: Any) -> torch.Tensor:
        pixels = torch.from_numpy(np.asarray(self.to_pixels(frame).convert("RGB"), dtype=np.uint8).copy())
        if pixels.shape[:2] != (self.image_size, self.image_size):
            raise BadSample(f"the transform made a {tuple(pixels.shape[:2])} image, not {self.image_size}", "no_media")
        return pixels.permute(2, 0, 1)

    def collate(self, encoded: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch, length = len(encoded), self.data.max_tokens
        size = self.image_size
        input_ids = torch.full((batch, length), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        labels = torch.full((batch, length), -100, dtype=torch.long)
        media = torch.zeros((batch, self.data.max_media, self.data.frames_per_clip, 3, size, size), dtype=torch.uint8)
        frame_mask = torch.zeros((batch, self.data.max_media, self.data.frames_per_clip), dtype=torch.bool)
        for row, item in enumerate(encoded):
            ids = item["input_ids"]
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
            labels[row, : len(ids)] = ids.masked_fill(item["is_media"], -100)  # media marks are not predicted
            for index, clip in enumerate(item["frames"]):
                media[row, index, : len(clip)] = clip
                frame_mask[row, index, : len(clip)] = True
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "media": media,
            "frame_mask": frame_mask,
        }


# What reading a tar can raise: a truncated or corrupt archive, a file gone or unreadable.
TAR_ERRORS = (OSError, EOFError, ValueError, tarfile.TarError)


def _tar_samples(url: str) -> Iterator[dict[str, Any] | BadSample]:
    """The samples of one tar; where it cannot be read further, one BadSample for the rest of it."""
    try:
        yield from tarfile_samples([{"url": url}])
    except TAR_ERRORS as exc:
        yield BadSample(f"broken shard {url}: {exc}", "broken_shard")


def _source_samples(source: ShardSource, prefix: str, position: list[int]) -> Iterator[dict[str, Any] | BadSample]:
    """Endless samples of one source from position [draw, offset]; a broken tar yields one BadSample."""
    empty_draws = 0
    while True:
        draw, offset = position
        url = random.Random(f"{prefix}/{source.name}/{draw}").choice(source.tars)
        produced = False
        for index, sample in enumerate(_tar_samples(url)):
            if index < offset and not isinstance(sample, BadSample):
                continue
            position[1] = index + 1
            produced = True
            yield sample
        position[0], position[1] = draw + 1, 0
        empty_draws = 0 if produced else empty_draws + 1
        if empty_draws > 10 * len(source.tars):
            raise TrainError(f"source {source.name}: its shards hold no samples")


def fresh_state(sources: list[ShardSource]) -> dict[str, Any]:
    return {
        "samples": 0,
        "skipped": 0,
        "sources": {source.name: [0, 0] for source in sources},
        "skips": {source.name: dict.fromkeys(SKIP_REASONS, 0) for source in sources},
        "window": {source.name: [0, 0] for source in sources},  # samples drawn, skipped in the current window
    }


def _check_window(source: str, window: list[int], skips: dict[str, int], data: DataConfig, last: str) -> None:
    """At the end of each window of data.skip_window samples drawn from a source, fail if more than
    data.max_skip_rate of them were skipped: that source is broken, and the mixture is not what was asked."""
    drawn, skipped = window
    if drawn < data.skip_window:
        return
    window[0] = window[1] = 0
    if skipped > data.max_skip_rate * drawn:
        reasons = ", ".join(f"{reason} {count}" for reason, count in skips.items() if count)
        raise TrainError(
            f"source {source}: {skipped} of its last {drawn} samples could not be read "
            f"(over data.max_skip_rate {data.max_skip_rate:.0%}; skipped so far: {reasons}); the last: {last}"
        )


def role_batches(
    sources: list[ShardSource], collator: Collator, data: DataConfig, prefix: str, state: dict[str, Any]
) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, Any]]]:
    """Micro-batches of one role and its position after each (state is advanced in place)."""
    fresh = fresh_state(sources)
    for key in ("skips", "window"):  # positions saved before skips were counted per source
        state.setdefault(key, fresh[key])
    streams = {source.name: _source_samples(source, prefix, state["sources"][source.name]) for source in sources}
    weights = [source.weight for source in sources]
    limit = data.max_sample_mb * 1e6
    while True:
        encoded = []
        while len(encoded) < data.micro_batch:
            rng = random.Random(f"{prefix}/sample/{state['samples']}")
            state["samples"] += 1
            source = rng.choices(sources, weights)[0]
            sample = next(streams[source.name])
            window = state["window"][source.name]
            window[0] += 1
            try:
                if isinstance(sample, BadSample):
                    raise sample
                size = sum(len(value) for value in sample.values() if isinstance(value, bytes))
                if size > limit:
                    raise BadSample(f"{size / 1e6:.1f} MB is over data.max_sample_mb", "too_large")
                encoded.append(collator.encode(DECODERS[source.layout](sample, data, rng)))
            except BadSample as exc:  # skipped and counted; any other error is a bug and stops the run
                state["skipped"] += 1
                state["skips"][source.name][exc.reason] += 1
                window[1] += 1
                _check_window(source.name, window, state["skips"][source.name], data, str(exc))
            else:
                _check_window(source.name, window, state["skips"][source.name], data, "")
        yield collator.collate(encoded), copy.deepcopy(state)


def skip_counts(states: list[dict[str, Any]], sources: list[ShardSource]) -> list[int]:
    """Skipped samples of the roles' positions summed, one count per (source, reason) in a fixed order."""
    return [
        sum(state.get("skips", {}).get(source.name, {}).get(reason, 0) for state in states)
        for source in sources
        for reason in SKIP_REASONS
    ]


def skip_breakdown(counts: list[float], sources: list[ShardSource]) -> dict[str, int]:
    """{"source/reason": count} of the non-zero counts of skip_counts (possibly summed over ranks)."""
    keys = [f"{source.name}/{reason}" for source in sources for reason in SKIP_REASONS]
    return {key: int(count) for key, count in zip(keys, counts) if count}


class TrainStream(IterableDataset):
    def __init__(
        self,
        sources: list[ShardSource],
        collator: Collator,
        data: DataConfig,
        seed_prefix: str,
        positions: dict[int, dict[str, Any]],
        role_offset: int,
    ):
        super().__init__()
        self.sources, self.collator, self.data = sources, collator, data
        self.seed_prefix, self.positions, self.role_offset = seed_prefix, positions, role_offset

    def __iter__(self) -> Iterator[tuple[int, dict[str, torch.Tensor], dict[str, Any]]]:
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker else (1, 0)
        role = (worker_id + self.role_offset) % workers
        state = copy.deepcopy(self.positions.get(role) or fresh_state(self.sources))
        for batch, position in role_batches(
            self.sources, self.collator, self.data, f"{self.seed_prefix}/{role}", state
        ):
            yield role, batch, position


def train_loader(
    sources: list[ShardSource],
    collator: Collator,
    data: DataConfig,
    seed_prefix: str,
    positions: dict[int, dict[str, Any]],
    batches_consumed: int,
    pin_memory: bool,
) -> DataLoader:
    roles = max(data.workers, 1)
    stream = TrainStream(sources, collator, data, seed_prefix, positions, batches_consumed % roles)
    extra = {"prefetch_factor": data.prefetch, "persistent_workers": True} if data.workers else {}
    return DataLoader(stream, batch_size=None, num_workers=data.workers, pin_memory=pin_memory, **extra)


def eval_batches(
    sources: list[ShardSource],
    collator: Collator,
    data: DataConfig,
    rank: int,
    world_size: int,
    count: int,
    dropped: dict[str, int],
) -> Iterator[dict[str, torch.Tensor]]:
    """`count` micro-batches of held-out samples for this rank: every world_size-th sample of the eval
    shards in order, from the start each time (the same samples at every evaluation), cycling if short.
    Samples left out are counted in `dropped` by "source/reason" (a broken tar counts once)."""
    produced, encoded, index = 0, [], 0
    while produced < count:
        good_in_pass = 0
        for source in sources:
            for url in source.tars:
                for sample in _tar_samples(url):
                    index += 1
                    if index % world_size != rank:
                        continue
                    try:
                        if isinstance(sample, BadSample):
                            raise sample
                        rng = random.Random(f"eval/{index}")
                        encoded.append(collator.encode(DECODERS[source.layout](sample, data, rng)))
                        good_in_pass += 1
                    except BadSample as exc:
                        key = f"{source.name}/{exc.reason}"
                        dropped[key] = dropped.get(key, 0) + 1
                        continue
                    if len(encoded) == data.micro_batch:
                        yield collator.collate(encoded)
                        produced, encoded = produced + 1, []
                        if produced == count:
                            return
        if not good_in_pass:
            raise TrainError("the eval shards hold no readable sample for this rank")
