"""What every command that writes a corpus shares under its `_state/`: the lock that keeps two of them
from writing at once, and the switch that puts a staged rewrite into place.

Lock: `_state/lock.json` names the process holding it (host, pid, command). `build`, `filter`, `dedup`
(and whatever rewrites a corpus) take it; a second one is refused with a message naming the holder. A
lock whose process is gone from this host is stale and taken over; one held on another host cannot be
checked from here, so the message says which file to remove once that process is known to be gone. The
holder's nested calls (the build's closing dedup pass, a filter's rewrite) pass. Locally the file is
created exclusively; object storage has no such create, so two commands started within the same
second can both get it there.

Switch: a rewrite (corpus/rewrite.py) stages every new file under `_state/rewrite/` and then lists them
in `_state/rewrite/complete.json`; from then on the corpus is only consistent once every listed file is
moved over its old one. Everything that reads or writes a corpus finishes such a switch first
(finish_pending_rewrite), or it would read part old files and part new.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

from cosmo_data.schemas.corpus_layout import STATE_DIR
from cosmo_data.storage import AnyPath, RemotePath, StorageError, location, remove_tree, write_atomic

LOCK = "lock.json"
REWRITE_STAGING = "rewrite"
COMPLETE = "complete.json"


class CorpusLocked(StorageError):
    """Another command is writing the corpus."""


def _this_process() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _read_lock(path: AnyPath) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None  # released meanwhile, or a half-written local file of a killed holder


def _holder_gone(held: dict) -> bool:
    return held.get("host") == socket.gethostname() and not _alive(int(held.get("pid", -1)))


@contextmanager
def corpus_lock(corpus: AnyPath | str, command: str) -> Iterator[None]:
    """Hold the corpus's lock for the block (see the module); CorpusLocked when another process holds it."""
    corpus = location(corpus)
    path = corpus / STATE_DIR / LOCK
    held = _read_lock(path) if path.exists() else None
    if held is not None and {k: held.get(k) for k in ("host", "pid")} == _this_process():
        yield  # this process holds it already (a nested call)
        return
    if held is not None and not _holder_gone(held):
        raise CorpusLocked(
            f"{corpus} is being written by `{held.get('command')}` (pid {held.get('pid')} on {held.get('host')}, "
            f"since {held.get('since')}); wait for it to finish, or remove {path} if that process is gone"
        )
    mine = {**_this_process(), "command": command, "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    data = json.dumps(mine).encode()
    # Folders only the lock made (a build refused before it wrote anything) go with it.
    made = [] if isinstance(path, RemotePath) else [p for p in (path.parent, corpus) if not p.exists()]
    new_prefix = isinstance(path, RemotePath) and not corpus.exists()
    if isinstance(path, RemotePath):
        write_atomic(path, data)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        if held is not None:
            path.unlink(missing_ok=True)  # stale: its process is gone
        try:
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise CorpusLocked(f"{corpus} was locked by another command just now ({path})") from None
        with os.fdopen(handle, "wb") as file:
            file.write(data)
    try:
        yield
    finally:
        if _read_lock(path) == mine:
            path.unlink(missing_ok=True)
        for folder in made:
            try:
                folder.rmdir()
            except OSError:  # the command wrote there
                break
        # Deleting the lock leaves an empty folder marker on S3 (pyarrow keeps the parent): drop it too.
        if new_prefix and not corpus.rglob("*"):
            remove_tree(corpus)


def pending_rewrite(corpus: AnyPath | str) -> bool:
    """Whether a complete staged rewrite waits to be moved into place."""
    return (location(corpus) / STATE_DIR / REWRITE_STAGING / COMPLETE).exists()


def finish_pending_rewrite(corpus: AnyPath | str) -> bool:
    """Move a complete staged rewrite into place (True), or drop an incomplete one (False); under the
    corpus's lock, so never while another command is moving it."""
    corpus = location(corpus)
    staging = corpus / STATE_DIR / REWRITE_STAGING
    if not staging.exists():
        return False
    with corpus_lock(corpus, "finish a pending rewrite"):
        complete = staging / COMPLETE
        if not complete.exists():
            remove_tree(staging)
            return False
        for relative in json.loads(complete.read_text()):
            source = staging / relative
            if source.exists():  # moved already by a switch killed halfway through
                _move(source, corpus / relative)
        complete.unlink()
        remove_tree(staging)
    return True


def _move(source: AnyPath, target: AnyPath) -> None:
    if isinstance(source, RemotePath):
        write_atomic(target, source.read_bytes())
        source.unlink()
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
