"""Word error rate as Whisper's paper measures it: both texts normalised by Whisper's English normaliser
(case, punctuation, spelled-out numbers, British spellings), then word-level edit distance."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


@lru_cache(maxsize=1)
def _normalizer():
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalized_words(text: str) -> list[str]:
    return _normalizer()(text).split()


def edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    """Substitutions + deletions + insertions that turn reference into hypothesis (Levenshtein)."""
    previous = list(range(len(hypothesis) + 1))
    for i, word in enumerate(reference, start=1):
        current = [i]
        for j, other in enumerate(hypothesis, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other)))
        previous = current
    return previous[-1]


@dataclass(frozen=True)
class WordErrors:
    errors: int
    words: int  # in the references

    @property
    def rate(self) -> float:
        return self.errors / self.words if self.words else 0.0


def word_errors(references: list[str], hypotheses: list[str]) -> WordErrors:
    """Errors summed over utterances, over the references' word count (corpus WER, not a mean of rates)."""
    errors = words = 0
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        expected = normalized_words(reference)
        errors += edit_distance(expected, normalized_words(hypothesis))
        words += len(expected)
    return WordErrors(errors, words)
