"""NarrateStage: one short narration per clip by an instruct LLM, Howto-Interlink7M's GPT-4 step.

Runs after DocumentStage, before CLIP scoring: per video, each clip's evidence (its keyframes' captions and
the speech sentences inside its span) goes to the model, which answers one 1-3 sentence narration per clip
as JSON keyed by clip index. The model never re-segments: the index carries the span. A narration that
passes the checks (stages/narration_grounding.py) replaces the clip's sentences with its own, each spanning
the whole clip, so CLIP scoring and assignment run unchanged and the cosmo layout's clip caption is the
narration. A clip whose narration fails keeps its sentences; clips.narration_status says which happened.

Videos with more clips than fit max_context_tokens go in windows of clips, each given the previous
window's last narration as context; window k of every video in the batch is generated together.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from pathlib import Path

from cosmo_data.models import pick_device
from cosmo_data.models.llm import Generation, GenerationTimeout, load_generator
from cosmo_data.schemas.config import BuildConfig, NarrationConfig
from cosmo_data.schemas.corpus_layout import hms
from cosmo_data.schemas.records import INTERNAL_ERROR, Clip, Document, Sentence, VideoRecord
from cosmo_data.stages.base import process_batched, resources_from
from cosmo_data.stages.document import split_sentences
from cosmo_data.stages.narration_grounding import (
    BACKEND_ERROR,
    NARRATED,
    NO_EVIDENCE,
    TIMEOUT,
    Verdict,
    check_narration,
    parse_window,
)

DEFAULT_PROMPT = Path(__file__).resolve().parent.parent / "configs" / "narration.prompt"
# The prompt file: the system message, a line "---", then the user message (string.Template).
PROMPT_SEPARATOR = "\n---\n"
NARRATION_SOURCE = "narration"


@dataclass
class ClipEvidence:
    clip_idx: int
    start_s: float
    end_s: float
    captions: list[str]
    speech: list[str]

    @property
    def texts(self) -> list[str]:
        return self.captions + self.speech


@dataclass
class ClipOutcome:
    clip_idx: int
    status: str
    narration: str | None = None  # the text the model wrote (kept for the preview), passed or not
    detail: str = ""


@dataclass
class Prompt:
    system: str
    user: string.Template

    @classmethod
    def read(cls, path: str | Path | None) -> Prompt:
        text = Path(path or DEFAULT_PROMPT).read_text(encoding="utf-8")
        system, separator, user = text.partition(PROMPT_SEPARATOR)
        if not separator:
            raise ValueError(f"narration prompt {path}: the system message must end with a line '---'")
        return cls(system.strip(), string.Template(user.strip()))


def sentence_clips(sentences: list[Sentence], clips: list[Clip]) -> list[int | None]:
    """Per sentence, the position in clips of the clip its midpoint lies in (as the cosmo layout groups
    them: stages/shard_samples.py clip_sentences), None outside every clip."""
    found: list[int | None] = []
    for sentence in sentences:
        middle = (sentence.start_s + sentence.end_s) / 2
        found.append(
            next(
                (
                    k
                    for k, clip in enumerate(clips)
                    if clip.start_s <= middle < clip.end_s or (k == len(clips) - 1 and middle == clip.end_s)
                ),
                None,
            )
        )
    return found


def clip_evidence(clips: list[Clip], sentences: list[Sentence]) -> list[ClipEvidence]:
    """Each clip's captions and speech: the original (caption, asr) sentences inside it."""
    evidence = [ClipEvidence(c.clip_idx, c.start_s, c.end_s, [], []) for c in clips]
    for sentence, k in zip(sentences, sentence_clips(sentences, clips)):
        if k is None:
            continue
        if sentence.source == "caption":
            evidence[k].captions.append(sentence.text)
        elif sentence.source == "asr":
            evidence[k].speech.append(sentence.text)
    return evidence


def clip_block(position: int, evidence: ClipEvidence) -> str:
    lines = [f"Clip {position} ({hms(int(evidence.start_s))} - {hms(int(evidence.end_s))}):"]
    lines += [f"  seen: {caption}" for caption in evidence.captions]
    lines += [f'  heard: "{speech}"' for speech in evidence.speech]
    return "\n".join(lines)


class Narrator:
    """Windows, prompts, one generate call per round of windows, and the checks; no model of its own."""

    def __init__(self, generator, config: NarrationConfig, prompt: Prompt):
        self.generator, self.config, self.prompt = generator, config, prompt
        # vLLM decodes a window's whole answer to its JSON schema; transformers fills a skeleton the
        # narrator writes (_fill_narrations).
        self.guided = config.backend == "vllm"
        self.output_tokens = 0

    def narrate(self, videos: list[list[ClipEvidence]]) -> list[list[ClipOutcome]]:
        """Outcomes per video, one per clip in the order given."""
        outcomes: list[dict[int, ClipOutcome]] = [{} for _ in videos]
        windows: list[list[list[int]]] = []
        for v, clips in enumerate(videos):
            for position, clip in enumerate(clips):
                if not clip.texts:
                    outcomes[v][position] = ClipOutcome(clip.clip_idx, NO_EVIDENCE)
            windows.append(self._windows(clips, [p for p in range(len(clips)) if p not in outcomes[v]]))
        previous: list[str] = ["" for _ in videos]
        for round_ in range(max((len(w) for w in windows), default=0)):
            jobs = [(v, w[round_]) for v, w in enumerate(windows) if round_ < len(w)]
            prompts = [self._prompt(videos[v], window, previous[v]) for v, window in jobs]
            generate = self._generate if self.guided else self._fill_narrations
            texts = generate(prompts, [window for _, window in jobs])
            for (v, window), text in zip(jobs, texts):
                for position, outcome in self._check(videos[v], window, text).items():
                    outcomes[v][position] = outcome
                    if outcome.status == NARRATED:
                        previous[v] = outcome.narration
        return [[by_position[p] for p in range(len(clips))] for by_position, clips in zip(outcomes, videos)]

    def _windows(self, clips: list[ClipEvidence], positions: list[int]) -> list[list[int]]:
        """Consecutive clips, as many per window as fit the context with their output budget."""
        fixed = self.generator.count_tokens(self.prompt.system + self.prompt.user.template) + 2 * (
            self.config.tokens_per_clip
        )
        windows: list[list[int]] = []
        used = fixed
        for position in positions:
            cost = self.generator.count_tokens(clip_block(position, clips[position])) + self.config.tokens_per_clip
            if windows and windows[-1] and used + cost <= self.config.max_context_tokens:
                windows[-1].append(position)
                used += cost
            else:
                windows.append([position])
                used = fixed + cost
        return windows

    def _prompt(self, clips: list[ClipEvidence], window: list[int], previous: str) -> str:
        user = self.prompt.user.safe_substitute(
            video=f"A how-to video in {len(clips)} clips.",
            previous=f'The clip before these was narrated: "{previous}"' if previous else "",
            clips="\n".join(clip_block(p, clips[p]) for p in window),
            count=len(window),
            indices=", ".join(str(p) for p in window),
        )
        return self.generator.chat(self.prompt.system, user)

    def _generate(self, prompts: list[str], windows: list[list[int]]) -> list[str | Verdict]:
        """Each window's whole answer in one generate call, decoded to the window's JSON schema where the
        backend can (vLLM's structured outputs); without that, bad JSON fails the window."""
        budget = max(self.config.tokens_per_clip * len(window) + 16 for window in windows)
        generations = self._call(prompts, budget, json_schemas=[window_schema(window) for window in windows])
        if isinstance(generations, Verdict):
            return [generations] * len(prompts)
        return [g.text for g in generations]

    def _fill_narrations(self, prompts: list[str], windows: list[list[int]]) -> list[str | Verdict]:
        """Structure-constrained decoding for backends without guided JSON (transformers): the program
        writes the answer's skeleton and the model only each narration's text. For clip slot j, every
        window that has one continues its prompt with the answer so far and `{"clip": k, "narration": "`,
        and generates up to a closing quote or a newline (batched: one generate call per slot), kept to
        max_sentences sentences. The answer is assembled with json.dumps, so it always parses; the checks
        still judge each narration."""
        answers: list[list[dict]] = [[] for _ in windows]
        for slot in range(max(len(window) for window in windows)):
            rows = [i for i, window in enumerate(windows) if slot < len(window)]
            # json.dumps of the answer with this clip's narration empty, cut before that empty string's
            # closing quote and the list's end: the prompt ends inside the narration's string.
            opened = [json.dumps([*answers[i], {"clip": windows[i][slot], "narration": ""}])[:-3] for i in rows]
            generations = self._call(
                [prompts[i] + answer for i, answer in zip(rows, opened)], self.config.tokens_per_clip, stop=['"', "\n"]
            )
            if isinstance(generations, Verdict):
                return [generations] * len(prompts)
            for i, generation in zip(rows, generations):
                text = re.split(r'["\n]', generation.text)[0].rstrip("\\")  # up to the closing quote
                answers[i].append({"clip": windows[i][slot], "narration": self._first_sentences(text)})
        return [json.dumps(answer) for answer in answers]

    def _first_sentences(self, text: str) -> str:
        """A narration is 1 to max_sentences sentences: the skeleton ends it after that many, as it ends the
        string at its quote, and drops an unfinished last one the budget cut (SmolLM2-135M writes good first
        sentences, then repeats itself until the budget runs out). A lone unfinished sentence stays, for the
        checks to judge."""
        sentences = split_sentences(text)
        if len(sentences) > 1 and not sentences[-1].endswith((".", "!", "?")):
            sentences.pop()
        return " ".join(sentences[: self.config.max_sentences]) if sentences else text.strip()

    def _call(self, prompts: list[str], max_new_tokens: int, **options) -> list[Generation] | Verdict:
        try:
            generations = self.generator.generate(prompts, max_new_tokens, **options)
        except GenerationTimeout as exc:
            return Verdict(TIMEOUT, str(exc))
        except Exception as exc:  # errors are data: the clips keep their sentences, the reason is recorded
            return Verdict(BACKEND_ERROR, f"{type(exc).__name__}: {exc}")
        self.output_tokens += sum(g.output_tokens for g in generations)
        return generations

    def _check(self, clips: list[ClipEvidence], window: list[int], text: str | Verdict) -> dict[int, ClipOutcome]:
        parsed = parse_window(text, window) if isinstance(text, str) else text
        if isinstance(parsed, Verdict):
            return {p: ClipOutcome(clips[p].clip_idx, parsed.status, None, parsed.detail) for p in window}
        outcomes = {}
        for position in window:
            narration = parsed[position]
            verdict = check_narration(narration, clips[position].texts, self.config)
            outcomes[position] = ClipOutcome(clips[position].clip_idx, verdict.status, narration, verdict.detail)
        return outcomes


def window_schema(window: list[int]) -> dict:
    """The JSON schema of a window's answer: exactly one {"clip", "narration"} entry per clip."""
    entry = {
        "type": "object",
        "properties": {"clip": {"type": "integer", "enum": window}, "narration": {"type": "string"}},
        "required": ["clip", "narration"],
        "additionalProperties": False,
    }
    return {"type": "array", "items": entry, "minItems": len(window), "maxItems": len(window)}


def narrated_sentences(sentences: list[Sentence], clips: list[Clip], outcomes: list[ClipOutcome]) -> list[Sentence]:
    """The document's sentences with each narrated clip's own replaced by its narration's, which span the
    whole clip; the others as they were, in time order."""
    narrated = {k for k, outcome in enumerate(outcomes) if outcome.status == NARRATED}
    kept = [s for s, k in zip(sentences, sentence_clips(sentences, clips)) if k not in narrated or k is None]
    new = [
        Sentence(text, clips[k].start_s, clips[k].end_s, NARRATION_SOURCE)
        for k in sorted(narrated)
        for text in split_sentences(outcomes[k].narration)
    ]
    return sorted(kept + new, key=lambda s: s.start_s)


def apply_outcomes(record: VideoRecord, outcomes: list[ClipOutcome]) -> None:
    for clip, outcome in zip(record.clips, outcomes):
        clip.narration_status, clip.narration = outcome.status, outcome.narration
    document: Document = record.document
    document.sentences = narrated_sentences(document.sentences, record.clips, outcomes)
    document.n_tokens = sum(len(s.text.split()) for s in document.sentences)


class NarrateStage:
    name = "narrate"

    def __init__(self, config: BuildConfig):
        self.config = config.narration
        self.resources = resources_from(self.config.resources)
        self.batch_size = self.config.resources.batch_size
        self.narrator: Narrator | None = None

    def setup(self) -> None:
        generator = load_generator(self.config, pick_device(self.config.resources))
        self.narrator = Narrator(generator, self.config, Prompt.read(self.config.prompt))

    def process(self, batch: list[VideoRecord]) -> list[VideoRecord]:
        return process_batched(batch, self._narrate, stage=self.name, failure_status=INTERNAL_ERROR)

    def _narrate(self, records: list[VideoRecord]) -> None:
        records = [r for r in records if r.document is not None]
        evidence = [clip_evidence(r.clips, r.document.sentences) for r in records]
        for record, outcomes in zip(records, self.narrator.narrate(evidence)):
            apply_outcomes(record, outcomes)
