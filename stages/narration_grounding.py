"""Checks on every LLM narration before it replaces a clip's sentences, and the statuses they give.

A window's output must parse as JSON, a list of {"clip": <index>, "narration": <text>} holding exactly the
window's clip indices once each; otherwise every clip of the window falls back (bad_json, wrong_clips).
Each narration is then checked alone: not empty, min_words..max_words words, at most max_sentences
sentences, and its content words supported by that clip's own inputs (its keyframe captions and the speech
inside its span).

Support: content words are the narration's lower-case words of 3+ letters that are not function words
or narrating words ("video", "shows", "person", ...: every narration uses them and no input need say
them). A content word is supported when a word of the clip's inputs has the same stem (a few English
suffixes stripped) or, both being 5+ letters, the same first 5 letters (onion/onions, slice/slicing). A
narration needs at least one content word (SmolLM2-135M, given the JSON skeleton, likes to answer "A how-to
video in 4 clips.", which says nothing about the clip), and the share of supported content words must reach
min_support (0.75 by default): a narration paraphrases, so a
connective word in four is allowed, but one invented object in a short narration ("cuts a pineapple"
where the inputs say onion: 2 of 3 supported, 0.67) fails it. Exact words, not embeddings: an LLM's
invented object is often semantically near the real one (pineapple/onion), which is exactly what an
embedding similarity forgives.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from cosmo_data.schemas.config import NarrationConfig
from cosmo_data.stages.document import split_sentences

NARRATED = "narrated"
# Fallbacks: the clip keeps its original sentences.
BAD_JSON = "bad_json"
WRONG_CLIPS = "wrong_clips"
EMPTY = "empty"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
UNSUPPORTED = "unsupported_words"
NO_EVIDENCE = "no_evidence"  # nothing seen or heard in the clip: never sent to the model
TIMEOUT = "timeout"
BACKEND_ERROR = "backend_error"

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_FUNCTION_WORDS = frozenset(
    """a about above across after again against all almost along also although always am among an and another
    any anyone anything are around as at away back be because been before being below between both but by
    can could did do does doing done down during each either else enough even ever every few for from
    further had has have having he her here hers herself him himself his how however i if in into is it its
    itself just least less like made make makes making many may me might more most much must my myself near
    neither never next no nor not now of off often on once one only onto or other others our ours ourselves
    out over own per perhaps quite rather really same several she should since so some something soon still
    such than that the their theirs them themselves then there these they thing things this those though
    through throughout thus to together too toward towards under until up upon us very via was way we well
    were what when where whether which while who whom whose why will with within without would yet you your
    yours yourself first second third finally last later""".split()
)
# Words about the narrating itself rather than the content: any clip's narration may use them.
_NARRATING_WORDS = frozenset(
    """video clip clips scene scenes shot footage frame frames viewer viewers shows show showing shown
    see sees seeing seen saw appears appear appearing begins begin beginning starts start starting continues
    continue continuing ends end ending opens open person people someone somebody man woman speaker narrator
    says say saying said explains explain explaining describes describe describing mentions talks talking
    heard hear hears demonstrates demonstrating process step steps moment while""".split()
)
_SUFFIXES = ("ing", "ed", "es", "s", "ly")


def content_words(text: str) -> list[str]:
    """The words of text that carry content, in order (see the module)."""
    return [
        word
        for word in _WORD.findall(text.lower())
        if len(word) >= 3 and word not in _FUNCTION_WORDS and word not in _NARRATING_WORDS
    ]


def _stem(word: str) -> str:
    word = word.split("'")[0]
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


@dataclass(frozen=True)
class Support:
    stems: frozenset[str]
    prefixes: frozenset[str]

    @classmethod
    def of(cls, texts: list[str]) -> Support:
        words = {word for text in texts for word in _WORD.findall(text.lower())}
        return cls(frozenset(_stem(w) for w in words), frozenset(w[:5] for w in words if len(w) >= 5))

    def supports(self, word: str) -> bool:
        return _stem(word) in self.stems or (len(word) >= 5 and word[:5] in self.prefixes)


@dataclass(frozen=True)
class Verdict:
    status: str
    detail: str = ""  # why it failed: the unsupported words, the word count, the parse error


def parse_window(text: str, indices: list[int]) -> dict[int, str] | Verdict:
    """The window's narrations by clip index, or the verdict that fails the whole window."""
    start = min((i for i in (text.find("["), text.find("{")) if i >= 0), default=-1)
    if start < 0:
        return Verdict(BAD_JSON, "no JSON in the output")
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as exc:
        return Verdict(BAD_JSON, str(exc))
    if isinstance(value, dict):  # {"clips": [...]} or a lone entry
        lists = [v for v in value.values() if isinstance(v, list)]
        value = lists[0] if len(lists) == 1 else [value]
    if not isinstance(value, list) or not all(
        isinstance(e, dict) and isinstance(e.get("clip"), int) and isinstance(e.get("narration"), str) for e in value
    ):
        return Verdict(BAD_JSON, 'not a list of {"clip": <index>, "narration": <text>}')
    found = [entry["clip"] for entry in value]
    if sorted(found) != sorted(indices):
        return Verdict(WRONG_CLIPS, f"clips {sorted(found)} for {sorted(indices)}")
    return {entry["clip"]: entry["narration"].strip() for entry in value}


def check_narration(text: str, evidence: list[str], config: NarrationConfig) -> Verdict:
    """The verdict on one clip's narration against that clip's own inputs."""
    if not text.strip():
        return Verdict(EMPTY)
    n_words = len(text.split())
    if n_words < config.min_words:
        return Verdict(TOO_SHORT, f"{n_words} words")
    n_sentences = len(split_sentences(text))
    if n_words > config.max_words or n_sentences > config.max_sentences:
        return Verdict(TOO_LONG, f"{n_words} words, {n_sentences} sentences")
    words = content_words(text)
    support = Support.of(evidence)
    unsupported = [w for w in words if not support.supports(w)]
    if not words:  # "A how-to video in 4 clips.": nothing about the clip, so nothing to ground
        return Verdict(UNSUPPORTED, "no content words")
    if 1 - len(unsupported) / len(words) < config.min_support:
        return Verdict(UNSUPPORTED, ", ".join(dict.fromkeys(unsupported)))
    return Verdict(NARRATED)
