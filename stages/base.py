"""The stage contract: plain classes with declared resources. Stages never import ray."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cosmo_data.schemas.config import StageResourcesConfig
from cosmo_data.schemas.records import INTERNAL_ERROR, VideoFailure, VideoRecord


@dataclass(frozen=True)
class Resources:
    cpus: float = 1.0
    gpus: float = 0.0
    # Number of parallel workers (Ray actors) running this stage.
    concurrency: int = 1


def resources_from(config: StageResourcesConfig) -> Resources:
    return Resources(cpus=config.cpus, gpus=config.gpus, concurrency=config.concurrency)


class Stage(Protocol):
    name: str
    resources: Resources
    batch_size: int

    def setup(self) -> None:
        """Load models once per worker."""

    def process(self, batch: list[VideoRecord]) -> list[VideoRecord]:
        """Return the batch, each record updated or marked failed. Never raises for one bad video."""


def process_each(
    batch: list[VideoRecord],
    fn: Callable[[VideoRecord], None],
    *,
    stage: str,
    failure_status: str,
) -> list[VideoRecord]:
    """Apply fn to every ok record, turning its exceptions into recorded failures.

    A VideoFailure keeps its own status; any other exception is recorded under failure_status
    with its message, so one bad video never fails the block or the job.
    """
    for record in batch:
        if not record.ok:
            continue
        started = time.perf_counter()
        try:
            fn(record)
        except VideoFailure as failure:
            record.fail(failure.status, failure.message)
            record.filter_reason = failure.filter_reason or record.filter_reason
        except MemoryError:
            record.fail(failure_status, f"{stage}: out of memory")
        except Exception as exc:  # errors are data: the record carries the real message on
            record.fail(failure_status or INTERNAL_ERROR, describe_exception(exc))
        finally:
            record.timings[stage] = record.timings.get(stage, 0.0) + time.perf_counter() - started
    return batch


def describe_exception(exc: BaseException) -> str:
    """One line 'Type: message' plus the innermost frame, enough to act on without a log dive."""
    message = str(exc).strip() or repr(exc)
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].name}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {message}{where}"


def process_batched(
    batch: list[VideoRecord],
    fn: Callable[[list[VideoRecord]], None],
    *,
    stage: str,
    failure_status: str,
) -> list[VideoRecord]:
    """Run fn once over all ok records, so the model sees them in shared forward passes.

    fn must compute everything before writing results to the records. If it raises, it is run again
    per record (through process_each), so one bad video fails alone with its own message and the
    others still get results.
    """
    records = [record for record in batch if record.ok]
    if not records:
        return batch
    started = time.perf_counter()
    try:
        fn(records)
    except Exception:  # the per-record rerun below records each video's own error
        for record in records:
            process_each([record], lambda one: fn([one]), stage=stage, failure_status=failure_status)
        return batch
    # The shared passes cannot be attributed to one video; each gets an equal share.
    share = (time.perf_counter() - started) / len(records)
    for record in records:
        record.timings[stage] = record.timings.get(stage, 0.0) + share
    return batch
