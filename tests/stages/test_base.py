from cosmo_data.schemas.records import (
    ASR_FAILED,
    DECODE_FAILED,
    VideoFailure,
    VideoRecord,
)
from cosmo_data.stages.base import process_batched, process_each


def test_process_each_records_failures_and_timings():
    def step(record: VideoRecord) -> None:
        if record.source == "raise":
            raise ValueError("boom")
        if record.source == "fail":
            raise VideoFailure(DECODE_FAILED, "moov atom not found")
        record.language = "en"

    batch = [VideoRecord(str(i), s, i) for i, s in enumerate(["ok", "raise", "fail"])]
    process_each(batch, step, stage="decode", failure_status="internal_error")
    assert [(r.status, r.language) for r in batch] == [("ok", "en"), ("internal_error", None), (DECODE_FAILED, None)]
    assert batch[1].error.startswith("ValueError: boom (at step:")
    assert batch[2].error == "moov atom not found"
    assert all("decode" in r.timings for r in batch)


def test_process_batched_isolates_the_video_that_breaks_the_shared_pass():
    def label(records: list[VideoRecord]) -> None:
        for record in records:
            if record.source == "bad":
                raise VideoFailure(ASR_FAILED, "bad audio in bad")
        for record in records:
            record.language = "xx"

    batch = [VideoRecord(video_id=str(i), source=s, source_index=i) for i, s in enumerate(["a", "bad", "c"])]
    batch.append(VideoRecord(video_id="3", source="d", source_index=3, status="decode_failed"))
    process_batched(batch, label, stage="asr", failure_status=ASR_FAILED)
    assert [(r.status, r.language) for r in batch] == [
        ("ok", "xx"),
        (ASR_FAILED, None),
        ("ok", "xx"),
        ("decode_failed", None),
    ]
    assert batch[1].error == "bad audio in bad"
    assert all("asr" in r.timings for r in batch[:3]) and not batch[3].timings


def test_process_batched_shares_time_across_a_successful_batch():
    batch = [VideoRecord(video_id=str(i), source=str(i), source_index=i) for i in range(2)]
    process_batched(batch, lambda records: None, stage="caption", failure_status="caption_failed")
    assert batch[0].timings["caption"] == batch[1].timings["caption"] >= 0
