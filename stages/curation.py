"""Curation stages: the rules of config.curation (stages/rules.py) applied where their signals are ready,
cheapest first, so that what a cheap rule drops never reaches a model.

- "picture", right after the video stage (in its pool: same resources): the audio's loudness is measured
  from the decoded PCM; clip rules (black, frozen, too short...) take a failing clip and its keyframes
  out of the video, frame rules a failing keyframe; a video left without clips or keyframes is filtered
  under the rule that took most of them; then static-and-silent footage.
- "speech", right after ASR (in its pool): language, its probability, no-speech probability, average
  log-probability, words per second; and no speech with no captions to come (no text at all).
- "document", right after assignment: keyframes failing a rule over the CLIP predictors' scores (NSFW)
  leave the video and the document's images, their clips leave it too (the cosmo layout's entries) and
  their caption sentences the document's text; then the images' matched similarity, aesthetic score and
  NSFW probability, each aggregated.

A dropped item keeps its place for the tables: a clip or keyframe moves to record.filtered_clips /
filtered_frames with filter_reason set; a filtered video keeps its rows (and, filtered by a document
rule, its document) with status "filtered" and filter_reason. Each drop is counted as dropped_<rule>.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from cosmo_data.schemas.config import BuildConfig
from cosmo_data.schemas.records import FILTERED, INTERNAL_ERROR, Document, Frame, VideoRecord
from cosmo_data.stages import rules
from cosmo_data.stages.base import process_each, resources_from

PICTURE = "picture"
SPEECH = "speech"
DOCUMENT = "document"


def filter_video(record: VideoRecord, rule: str, message: str, *, count: bool = True) -> None:
    """Filter the whole video under rule; its rows stay, its document too where it has one. count: False
    where the rule's items were counted already (the video went with its last clip)."""
    record.status = FILTERED
    record.error = message
    record.filter_reason = rule
    if count:
        record.count(rule)
    record.audio_pcm = None
    record.cosmo_video = None
    for frame in record.frames:
        frame.jpeg = b""  # the tables keep no pictures, and no sample will be made


def audio_dbfs(pcm: bytes | None) -> float | None:
    """RMS level of 16-bit PCM in dB below full scale (-120 for digital silence); None without audio."""
    if not pcm:
        return None
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
    rms = float(np.sqrt(np.dot(samples, samples) / max(samples.size, 1)))
    return round(20 * np.log10(max(rms, 1e-6)), 2)


class CurationStage:
    def __init__(self, config: BuildConfig, step: str):
        self.step = step
        self.name = f"curate_{step}"
        self.rules = config.curation
        self.captions = config.caption.enabled
        # In the pool of the stage before it: no actor of its own for a few comparisons.
        resources = {
            PICTURE: config.video.resources,
            SPEECH: config.asr.resources,
            DOCUMENT: config.assign.resources,
        }[step]
        self.resources = resources_from(resources)
        self.batch_size = resources.batch_size
        self._apply = {PICTURE: self._picture, SPEECH: self._speech, DOCUMENT: self._document}[step]

    def setup(self) -> None:
        """Nothing to load."""

    def process(self, batch: list[VideoRecord]) -> list[VideoRecord]:
        return process_each(batch, self._apply, stage=self.name, failure_status=INTERNAL_ERROR)

    def _picture(self, record: VideoRecord) -> None:
        record.audio_dbfs = audio_dbfs(record.audio_pcm)
        for clip in record.clips:
            clip.filter_reason = rules.clip_failure(
                self.rules.clip,
                duration_s=clip.end_s - clip.start_s,
                motion=clip.motion,
                brightness=clip.brightness,
                sharpness=clip.sharpness,
                frozen_fraction=clip.frozen_fraction,
            )
        reason_of_clip = {clip.clip_idx: clip.filter_reason for clip in record.clips}
        for frame in record.frames:
            frame.filter_reason = reason_of_clip.get(frame.clip_idx) or rules.frame_failure(
                self.rules.frame, width=frame.width, height=frame.height
            )
        dropped_clips = [clip for clip in record.clips if clip.filter_reason]
        dropped_frames = [frame for frame in record.frames if frame.filter_reason]
        for reason, n in Counter(c.filter_reason for c in dropped_clips).items():
            record.count(reason, n)
        for reason, n in Counter(
            f.filter_reason for f in dropped_frames if not f.filter_reason.startswith("clip_")
        ).items():
            record.count(reason, n)
        record.clips = [clip for clip in record.clips if not clip.filter_reason]
        record.frames = [frame for frame in record.frames if not frame.filter_reason]
        record.filtered_clips += dropped_clips
        record.filtered_frames += dropped_frames
        for frame in dropped_frames:
            frame.jpeg = b""
        if not record.clips or (dropped_frames and not record.frames):
            # Nothing left to make a document from: the rule that took most of it names the drop.
            taken = Counter(item.filter_reason for item in (dropped_clips if not record.clips else dropped_frames))
            rule = taken.most_common(1)[0][0]
            what = "clip" if not record.clips else "keyframe"
            filter_video(record, rule, f"every {what} failed a rule ({rule})", count=False)
            return
        rule = rules.picture_failure(
            self.rules.video, motion=record.motion, has_audio=record.has_audio, audio_dbfs=record.audio_dbfs
        )
        if rule:
            filter_video(record, rule, f"static and silent: motion {record.motion} (curation.video.{rule[6:]})")

    def _speech(self, record: VideoRecord) -> None:
        rule = rules.speech_failure(
            self.rules.video,
            words_per_s=record.words_per_s,
            captions=self.captions,
            language=record.language,
            language_probability=record.language_probability,
            no_speech_prob=record.no_speech_prob,
            avg_logprob=record.avg_logprob,
        )
        if rule:
            filter_video(record, rule, f"speech signals fail curation.video.{rule[6:]}")

    def _document(self, record: VideoRecord) -> None:
        document = record.document
        if document is None:
            return
        if self._drop_scored_frames(record, document):
            return
        images = [record.frames[index] for index in document.image_frames]
        aesthetics = [f.aesthetic for f in images if f.aesthetic is not None]
        nsfw = [f.nsfw for f in images if f.nsfw is not None]
        rule = rules.document_failure(
            self.rules.document, matched_similarities=document.matched_sim, aesthetics=aesthetics, nsfw=nsfw
        )
        if rule:
            values = {
                "document_min_matched_similarity": document.matched_sim,
                "document_min_aesthetic": aesthetics,
                "document_max_nsfw": nsfw,
            }[rule]
            value = rules.aggregate(values, self.rules.document)
            signal = rule.split("_", 2)[2]  # matched_similarity, aesthetic, nsfw
            filter_video(record, rule, f"images' {signal} {value:.4f} fails curation.document.{rule[9:]}")

    def _drop_scored_frames(self, record: VideoRecord, document: Document) -> bool:
        """Frame rules over the CLIP predictors' scores (NSFW): a failing keyframe leaves the video and the
        document's images (and matrix rows); assignment already ran, so its sentence keeps no image, as
        with `cosmo-data filter`. What it showed leaves every layout too: its clip is filtered (the cosmo
        layout lists clips, not keyframes: no entry, no span over that footage) and its caption sentence
        leaves the document's text. True when that took every image, clip or sentence (the video is
        filtered). Counted once per keyframe, under its rule."""
        for frame in record.frames:
            frame.filter_reason = rules.scored_frame_failure(self.rules.frame, nsfw=frame.nsfw)
        dropped = [frame for frame in record.frames if frame.filter_reason]
        if not dropped:
            return False
        rule = Counter(f.filter_reason for f in dropped).most_common(1)[0][0]
        for reason, n in Counter(f.filter_reason for f in dropped).items():
            record.count(reason, n)
        new_index = {}
        for index, frame in enumerate(record.frames):
            if not frame.filter_reason:
                new_index[index] = len(new_index)
        rows = [row for row, index in enumerate(document.image_frames) if index in new_index]
        had_images = bool(document.image_frames)
        document.image_frames = [new_index[document.image_frames[row]] for row in rows]
        document.similarity = [document.similarity[row] for row in rows]
        document.matched_text_index = [document.matched_text_index[row] for row in rows]
        document.matched_sim = [document.matched_sim[row] for row in rows]
        record.frames = [frame for frame in record.frames if not frame.filter_reason]
        record.filtered_frames += dropped
        for frame in dropped:
            frame.jpeg = b""
        had_clips = bool(record.clips)
        _filter_clips_of(record, dropped)
        _drop_captions_of(document, dropped)
        if had_images and not document.image_frames:
            filter_video(record, rule, f"every image of its document failed a rule ({rule})", count=False)
            return True
        if had_clips and not record.clips:
            filter_video(record, rule, f"every clip had a keyframe that failed a rule ({rule})", count=False)
            return True
        if not document.sentences:
            filter_video(record, rule, f"every sentence was the caption of a keyframe that failed {rule}", count=False)
            return True
        return False


def _filter_clips_of(record: VideoRecord, frames: list[Frame]) -> None:
    """The clips of these keyframes leave the video under the keyframe's rule, with their cosmo spans."""
    reason_of_clip = {frame.clip_idx: frame.filter_reason for frame in frames}
    for clip in record.clips:
        clip.filter_reason = reason_of_clip.get(clip.clip_idx)
    record.filtered_clips += [clip for clip in record.clips if clip.filter_reason]
    record.clips = [clip for clip in record.clips if not clip.filter_reason]
    if record.cosmo_video is not None:
        for clip_idx in reason_of_clip:
            record.cosmo_video.spans.pop(clip_idx, None)


def _drop_captions_of(document: Document, frames: list[Frame]) -> None:
    """Each keyframe's caption sentence (DocumentStage: at the keyframe's instant) leaves the document, with
    its column of the similarity matrix. An image matched to one moves to its most similar sentence left,
    as MMC4 places an image the assignment left over."""
    captions = {(frame.t_s, frame.caption.strip()) for frame in frames if frame.caption and frame.caption.strip()}
    keep = [
        index
        for index, s in enumerate(document.sentences)
        if not (s.source == "caption" and s.start_s == s.end_s and (s.start_s, s.text) in captions)
    ]
    if len(keep) == len(document.sentences):
        return
    new_column = {old: new for new, old in enumerate(keep)}
    document.sentences = [document.sentences[index] for index in keep]
    document.similarity = [[row[index] for index in keep] for row in document.similarity]
    for image, row in enumerate(document.similarity):
        if document.matched_text_index[image] in new_column:
            document.matched_text_index[image] = new_column[document.matched_text_index[image]]
        elif row:
            best = max(range(len(row)), key=row.__getitem__)
            document.matched_text_index[image], document.matched_sim[image] = best, row[best]
    document.n_tokens = sum(len(s.text.split()) for s in document.sentences)
