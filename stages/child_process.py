"""Running one step of one video in a child process with a hard deadline (download, decode).

The child runs in its own process group and is killed with everything it started (ffmpeg) at the
deadline: nothing inside a process can stop a read that blocks forever (see stages/download.py).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
from collections.abc import Callable
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from cosmo_data.schemas.records import DEADLINE_EXCEEDED, VideoFailure
from cosmo_data.stages.base import describe_exception

# A child killed for its deadline has this long to exit before the parent stops waiting for it.
KILL_WAIT_S = 10.0

T = TypeVar("T")


def run_with_deadline(fn: Callable[..., T], args: tuple, *, timeout_s: float, step: str, crash_status: str) -> T:
    """Run fn(*args) in a child process and return its result; kill it and its children at the deadline.

    VideoFailures raised by fn come back as they were; any other exception, or the child dying, is
    recorded under crash_status. fn and args must be picklable (fn a module-level function).
    The child runs in its own process group so that ffmpeg processes it started die with it.
    """
    context = multiprocessing.get_context("forkserver")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child_main, args=(sender, fn, args, timeout_s), name=f"cosmo-{step}")
    child.start()
    sender.close()
    outcome: tuple | None = None  # None: the deadline passed first
    try:
        if receiver.poll(timeout_s):
            outcome = receiver.recv()
    except EOFError:
        outcome = ("died",)
    finally:
        receiver.close()
        _stop(child, kill=outcome is None or outcome[0] == "died")
    if outcome is None:
        raise VideoFailure(DEADLINE_EXCEEDED, f"{step} did not finish within its deadline of {timeout_s:g} s")
    if outcome[0] == "ok":
        return outcome[1]
    if outcome[0] == "failed":
        raise VideoFailure(*outcome[1:])
    if outcome[0] == "died":
        raise VideoFailure(crash_status, f"{step} process died ({_exit_reason(child.exitcode)})")
    raise VideoFailure(crash_status, outcome[1])


def prepare_children(modules: tuple[str, ...]) -> None:
    """Start the process that forks deadline children, with these modules already imported.

    Optional: without it the first run_with_deadline starts it, and each child imports on its own.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", *modules])
    forkserver.ensure_running()


def _child_main(sender: Connection, fn: Callable[..., Any], args: tuple, timeout_s: float) -> None:
    os.setpgid(0, 0)
    # Backstop for a parent that dies without killing us: SIGALRM's default action ends the process.
    signal.alarm(math.ceil(timeout_s + KILL_WAIT_S))
    try:
        outcome: tuple = ("ok", fn(*args))
    except VideoFailure as failure:
        outcome = ("failed", failure.status, failure.message, failure.filter_reason)
    except BaseException as exc:  # errors are data: the parent records the message
        outcome = ("error", describe_exception(exc))
    try:
        sender.send(outcome)
    except Exception as exc:  # a result that cannot be pickled
        sender.send(("error", describe_exception(exc)))
    sender.close()


def _stop(child: multiprocessing.process.BaseProcess, *, kill: bool) -> None:
    """Wait for a child that has answered; kill the group of one that has not (or does not exit)."""
    if not kill:
        child.join(KILL_WAIT_S)
    if kill or child.is_alive():
        try:
            os.killpg(child.pid, signal.SIGKILL)  # the child, and the ffmpeg it may be running
        except (ProcessLookupError, PermissionError):
            child.kill()  # it had not made its own process group yet
        child.join(KILL_WAIT_S)


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        name = signal.Signals(-exitcode).name
        hint = ", often the kernel's out-of-memory killer" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}"
    return f"exit code {exitcode}"
