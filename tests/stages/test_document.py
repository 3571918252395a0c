import io

from PIL import Image

from cosmo_data.schemas.config import BuildConfig
from cosmo_data.schemas.records import (
    DOWNLOAD_FAILED,
    FILTERED,
    Clip,
    Frame,
    Segment,
    VideoRecord,
)
from cosmo_data.stages.document import DocumentStage, segment_sentences, split_sentences


def jpeg(color: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def record_with(frames: list[Frame], transcript: list[Segment]) -> VideoRecord:
    record = VideoRecord("vid_a", "/videos/a.mp4", 0, duration_s=20.0)
    record.clips = [Clip(0, 0.0, 10.0, "start"), Clip(1, 10.0, 20.0, "cut")]
    record.frames = frames
    record.transcript = transcript
    return record


def test_split_sentences_breaks_at_sentence_punctuation_only():
    text = ' First we heat 3.5 cups of water. Is it hot? "Yes!" Then stir…  done 你好。我们走吧！'
    assert split_sentences(text) == [
        "First we heat 3.5 cups of water.",
        "Is it hot?",
        '"Yes!"',
        "Then stir…",
        "done 你好。",
        "我们走吧！",
    ]
    assert split_sentences("   ") == []


def test_segment_time_is_shared_in_proportion_to_sentence_length():
    sentences = segment_sentences(Segment(0, 10.0, 16.0, "Aaaa. Bb.", -0.2, 0.01))
    # "Aaaa." has 5 characters, "Bb." 3: 6 s split 3.75 s + 2.25 s.
    assert [(s.text, s.start_s, s.end_s, s.source) for s in sentences] == [
        ("Aaaa.", 10.0, 13.75, "asr"),
        ("Bb.", 13.75, 16.0, "asr"),
    ]


def test_document_merges_captions_and_speech_in_time_order():
    frames = [
        Frame(0, 0, 5.0, 32, 24, jpeg("red"), "a red bowl on a table"),
        Frame(1, 1, 15.0, 32, 24, jpeg("blue"), "   "),  # blank caption: no sentence
        Frame(1, 2, 18.0, 32, 24, jpeg("green"), "a green pan"),
    ]
    transcript = [
        Segment(0, 1.0, 7.0, " Welcome back. Today we cook!", -0.2, 0.01),
        Segment(1, 12.0, 13.0, "  ", -0.9, 0.8),
        Segment(2, 16.0, 20.0, "Stir well.", -0.1, 0.0),
    ]
    record = record_with(frames, transcript)
    [out] = DocumentStage(BuildConfig()).process([record])

    assert out.ok and out.document is not None
    document = out.document
    assert [(s.text, s.source) for s in document.sentences] == [
        ("Welcome back.", "asr"),
        ("Today we cook!", "asr"),
        ("a red bowl on a table", "caption"),
        ("Stir well.", "asr"),
        ("a green pan", "caption"),
    ]
    starts = [s.start_s for s in document.sentences]
    assert starts == sorted(starts)
    assert (document.sentences[2].start_s, document.sentences[2].end_s) == (5.0, 5.0)
    assert document.doc_id == "vid_a"
    assert document.image_frames == [0, 1, 2]
    assert document.n_tokens == 2 + 3 + 6 + 2 + 3
    assert "document" in out.timings


def test_video_without_captions_or_speech_is_filtered_and_counted():
    record = record_with([Frame(0, 0, 5.0, 32, 24, jpeg("red"), None)], [Segment(0, 0.0, 2.0, " ", -1.0, 0.9)])
    [out] = DocumentStage(BuildConfig()).process([record])
    assert out.status == FILTERED
    assert "no sentences" in out.error
    assert out.document is None
    assert out.counters == {"dropped_no_sentences": 1}
    assert out.filter_reason == "document_no_sentences"  # the funnel's name for it


def test_failed_records_pass_through_untouched():
    record = record_with([Frame(0, 0, 5.0, 32, 24, jpeg("red"), "a red bowl")], [])
    record.fail(DOWNLOAD_FAILED, "HTTP Error 404: Not Found")
    [out] = DocumentStage(BuildConfig()).process([record])
    assert (out.status, out.error) == (DOWNLOAD_FAILED, "HTTP Error 404: Not Found")
    assert (out.document, out.timings) == (None, {})


def test_stage_takes_its_resources_from_config():
    config = BuildConfig.model_validate({"assign": {"document_resources": {"cpus": 0.5, "batch_size": 3}}})
    stage = DocumentStage(config)
    assert (stage.name, stage.resources.cpus, stage.resources.gpus, stage.batch_size) == ("document", 0.5, 0.0, 3)
