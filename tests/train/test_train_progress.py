"""The trainer's progress on stdout: a bar redrawn in place on a terminal, a plain line every N seconds
elsewhere, both with step, loss, tokens/s and an ETA from the recent step rate."""

from __future__ import annotations

import io

from cosmo_data.train.metrics import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(step: int) -> dict:
    return {
        "step": step, "loss": 2.5 - step / 100, "lr": 1e-4, "tokens_per_s": 12345.6, "data_wait_fraction": 0.05,
        "mfu": 0.412, "skipped_samples": 0,
    }  # fmt: skip


def test_off_a_terminal_a_plain_line_every_n_seconds_and_at_the_end():
    stream, clock = io.StringIO(), Clock()
    progress = Progress(0, 100, every_s=30, stream=stream, clock=clock)
    for step in range(1, 101):
        clock.now = step * 2.0  # 2 s a step
        progress.update(record(step))
    lines = stream.getvalue().splitlines()
    # Steps 1, 16, 31, ... (30 s apart), then the last step.
    assert [int(line.split()[1].split("/")[0]) for line in lines] == [1, 16, 31, 46, 61, 76, 91, 100]
    assert lines[1] == "step 16/100 loss 2.3400 lr 1.00e-04 | 12,346 tokens/s mfu 41.2% data wait 5% | ETA 0:02:48"
    assert "\r" not in stream.getvalue()


def test_on_a_terminal_a_bar_redrawn_in_place_with_evaluations_above_it():
    stream, clock = Terminal(), Clock()
    progress = Progress(50, 1050, every_s=30, stream=stream, clock=clock)
    clock.now = 10.0
    progress.update(record(51))
    progress.message("eval step 51: val loss 2.0000")
    clock.now = 11.0
    progress.update({**record(52), "skipped_samples": 3})
    text = stream.getvalue()
    assert text.startswith("\r\033[K[#-----------------------] step 51/1050 loss 1.9900")
    assert "ETA 2:46:30" in text  # 999 steps left at 10 s a step
    assert "\r\033[Keval step 51: val loss 2.0000\n" in text
    assert text.endswith("| skipped 3 | ETA 1:31:29")  # the recent rate: 2 steps in 11 s
    clock.now = 12.0
    progress.update(record(1050))
    assert stream.getvalue().endswith(
        "\r\033[K[########################] step 1050/1050 loss -8.0000 lr 1.00e-04 | "
        "12,346 tokens/s mfu 41.2% data wait 5% | ETA 0:00:00\n"
    )
