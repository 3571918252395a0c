"""GPT-2's byte-level BPE, from the vocabulary file that openai-whisper ships: no hub, no torch.

OPT's tokenizer (COSMO's language model) is GPT-2's BPE, so counts made with it are the token counts
COSMO's loader cuts at. whisper's package is located, not imported, so counting never loads torch.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import tiktoken
from tiktoken.load import load_tiktoken_bpe
from tiktoken_ext.openai_public import r50k_pat_str


def gpt2_vocabulary() -> Path:
    """GPT-2's BPE ranks as openai-whisper ships them (tiktoken's file format)."""
    spec = importlib.util.find_spec("whisper")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("openai-whisper is not installed: its assets hold the GPT-2 vocabulary")
    return Path(spec.submodule_search_locations[0]) / "assets" / "gpt2.tiktoken"


@lru_cache(maxsize=1)
def gpt2_encoding() -> tiktoken.Encoding:
    ranks = load_tiktoken_bpe(str(gpt2_vocabulary()))
    return tiktoken.Encoding("gpt2-whisper-assets", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={})


def count_tokens(text: str) -> int:
    return len(gpt2_encoding().encode_ordinary(text))


def fit_tokens(sentences: list[str], budget: int) -> str:
    """The sentences, in order, joined by spaces, as many as fit in budget tokens; a first sentence
    longer than the budget is cut at the last word that fits."""
    kept: list[str] = []
    for sentence in sentences:
        if count_tokens(" ".join([*kept, sentence])) <= budget:
            kept.append(sentence)
        elif kept:
            break
        else:
            encoding = gpt2_encoding()
            prefix = encoding.decode(encoding.encode_ordinary(sentence)[:budget])
            # GPT-2's tokens start with their space: a cut inside a word drops the word's start.
            kept.append(prefix if sentence[len(prefix) : len(prefix) + 1] in ("", " ") else prefix.rsplit(" ", 1)[0])
            break
    return " ".join(kept).strip()
