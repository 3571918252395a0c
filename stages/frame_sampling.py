"""Frames taken from a decode at a rate and made small: shared by the scan, keyframes and the cosmo video."""

from __future__ import annotations

# Swscale's area averaging: a proper box filter when shrinking (no aliasing noise for the detectors)
# and about twice as fast as its bilinear at these ratios. One thread: the outputs are tiny and the
# decoder's threads already use the cores.
SCALING = "AREA"


class RateSampler:
    """Takes frames at about `fps` from decoded frames at any spacing: a frame is taken once it reaches
    the next point of a 1/fps grid (at 25 fps and 8 fps: every 3rd frame, now and then the 4th), and
    never within half a step of the last one taken, so the grid cannot crowd samples after a gap."""

    def __init__(self, fps: float):
        self.interval_s = 1.0 / fps
        self._due_s: float | None = None

    def take(self, t_s: float) -> bool:
        # Timestamps are milliseconds or ticks: a microsecond of slack keeps grid points exact.
        if self._due_s is not None and t_s < self._due_s - 1e-6:
            return False
        grid_s = t_s if self._due_s is None else self._due_s
        self._due_s = max(grid_s + self.interval_s, t_s + self.interval_s / 2)
        return True


def fit_width(width: int, height: int, target_width: int) -> tuple[int, int]:
    """Scale to target_width (never up), keeping the aspect ratio; even sizes for swscale's chroma."""
    new_width = min(width, target_width)
    new_height = max(2, round(height * new_width / width / 2) * 2)
    return max(2, new_width // 2 * 2), new_height


def fit_longest(width: int, height: int, longest: int) -> tuple[int, int]:
    scale = min(1.0, longest / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))
