"""A corpus on disk as its readers rely on it: the build's state folder and the shard layouts' contract
with the trainers that read them. Shared by the writer, validate and train.

COSMO's interleaved-video loader (showlab/cosmo, InterleaveVideoTextWDSDataset with
BaseDataset.preprocess_interleaved_video_wds and read_frames_from_timestamps_and_path) reads a sample's
`clips` string of "H:MM:SS - H:MM:SS" spans as whole seconds, divides them by `video_speed` and
multiplies by the mp4's average frame rate, truncating, to find a clip's frames; it assumes a constant
frame rate over the whole mp4, and sizes its epoch from `num_samples.json` beside the shards.
"""

from __future__ import annotations

# The build's own state (run fingerprint, group done markers) under the corpus folder.
STATE_DIR = "_state"

# COSMO's HowTo100M mp4s were sped up 5x to save space; its loader divides every clip time by this.
COSMO_VIDEO_SPEED = 5
# COSMO's interleaved-video samples: 3 adjacent clips in 128 tokens (MAX_NUM_TOKENS, max_clips).
COSMO_MAX_TOKENS = 128
COSMO_CLIPS_PER_SAMPLE = 3
# Tokens of a sample that are not caption text: "<s>" and the tokenizer's own BOS, a <visual> and an
# <|endofchunk|> per clip, and the EOS (OPT's tokenizer; "<s>" is at most 3 of its BPE tokens).
COSMO_FRAMING_TOKENS = 4 + 2 * COSMO_CLIPS_PER_SAMPLE + 1
COSMO_CAPTION_TOKENS = (COSMO_MAX_TOKENS - COSMO_FRAMING_TOKENS) // COSMO_CLIPS_PER_SAMPLE

# Beside each layout's tars: {tar name: samples}. COSMO reads num_samples.json (without it, it assumes
# 5,000 samples per shard); sizes.json is the name OpenFlamingo-style loaders use.
SIZES_FILES = ("sizes.json", "num_samples.json")


def cosmo_frame_index(seconds: int, fps: float) -> int:
    """The frame index COSMO's loader computes for a whole-second time of a clip string."""
    return int(float(seconds) / COSMO_VIDEO_SPEED * fps)


def cosmo_frames_read(start: int, end: int, fps: float, n_frames: int) -> range:
    """Every frame COSMO's loader may take for the clip string "start - end" of an mp4 of n_frames frames.

    It samples frames in [begin, end - 1] (one random frame per equal part), after moving the whole range
    back when its end reaches the last frame; a degenerate range gives its begin.
    """
    begin, stop = cosmo_frame_index(start, fps), cosmo_frame_index(end, fps)
    if stop >= n_frames:
        begin, stop = begin - (stop - n_frames + 1), n_frames - 1
    return range(max(begin, 0), max(stop, begin + 1))


def hms(seconds: int) -> str:
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
