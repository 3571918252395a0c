"""Identities and their pacing: who yt-dlp is to the platform, how often it may ask, and when it sleeps.

An identity is one address (a proxy, or this machine's own) with the build's cookies. YouTube's limits
and bot checks are per identity, so its state (when it may next start an extraction, until when it
sleeps, how many strikes in a row) lives in a small file per identity under the node's temporary
folder, locked while read and written: every worker of the node paces the same identity together.

A worker keeps to one identity (sticky: the platform sees one steady client) and moves to the next only
while its own sleeps. A bot check or a rate limit puts the identity to sleep, twice as long at each
strike in a row; the video then waits for an awake identity instead of failing. When every identity
sleeps, the worker says so on stderr (Ray shows it in the build's output) and waits.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cosmo_data.schemas.config import DownloadConfig
from cosmo_data.stages.ytdlp_access import proxy_label


@dataclass
class Turn:
    """An identity's turn: its proxy (None: this machine), or none awake and how long until one wakes."""

    proxy: str | None
    awake: bool
    wait_s: float


class Identities:
    def __init__(self, config: DownloadConfig, state_dir: Path):
        self.config = config
        self.proxies: list[str | None] = list(config.proxies) or [None]
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Sticky: a worker starts from its own proxy and keeps to it while it is awake.
        self.first = os.getpid() % len(self.proxies)

    def _file(self, proxy: str | None) -> Path:
        who = f"{proxy_label(proxy)}|{self.config.cookies_file or ''}"
        return self.state_dir / f"identity-{hashlib.sha256(who.encode()).hexdigest()[:16]}.json"

    def _update(self, proxy: str | None, change) -> dict:
        """Read, change and write an identity's state under its lock; returns the state as changed."""
        path = self._file(proxy)
        with open(path, "a+", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            text = handle.read()
            state = json.loads(text) if text.strip() else {"next_start": 0.0, "asleep_until": 0.0, "strikes": 0}
            change(state)
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(state))
            return state

    def take(self, interval_s: float) -> Turn:
        """The first awake identity from this worker's own, with its start slot reserved interval_s
        after the previous one; or, when all sleep, how long until the first wakes."""
        now = time.time()
        wakes: list[float] = []
        order = self.proxies[self.first :] + self.proxies[: self.first]
        for proxy in order:
            slot: dict[str, float] = {}

            def reserve(state: dict, slot=slot) -> None:
                if state["asleep_until"] > now:
                    slot["asleep_until"] = state["asleep_until"]
                    return
                start = max(now, state["next_start"])
                state["next_start"] = start + interval_s
                slot["start"] = start

            self._update(proxy, reserve)
            if "start" in slot:
                return Turn(proxy, True, slot["start"] - now)
            wakes.append(slot["asleep_until"])
        return Turn(None, False, max(0.0, min(wakes) - now))

    def strike(self, proxy: str | None) -> float:
        """Put the identity to sleep for its next, longer period; returns how long it sleeps."""
        config = self.config
        slept: dict[str, float] = {}

        def sleep(state: dict) -> None:
            state["strikes"] += 1
            period = min(config.identity_sleep_s * 2 ** (state["strikes"] - 1), config.identity_max_sleep_s)
            state["asleep_until"] = max(state["asleep_until"], time.time() + period)
            slept["s"] = period

        self._update(proxy, sleep)
        return slept["s"]

    def clear(self, proxy: str | None) -> None:
        """The identity got a video through: its next strike starts from the shortest sleep again."""
        self._update(proxy, lambda state: state.update(strikes=0))


def say(message: str) -> None:
    """A line for whoever watches the build (a Ray worker's stderr reaches the driver's console)."""
    print(f"cosmo-data download: {message}", file=sys.stderr, flush=True)
