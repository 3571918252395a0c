"""Curation applied to a built corpus (`filter`, `dedup`), applied again after a build writes groups.

A build that resumes or retries (`--retry-failed`) writes its groups under its own config: videos that
a later `filter` dropped, or `dedup` marked, would be back in those groups. Each rewrite records the step
it applied in `_state/curation.json` (corpus/rewrite.py); after a build that wrote a group, every step is
run again over the whole corpus, in the order they were first run. Both only ever take out: the groups
they had already judged stay as they are (filter's rules find nothing new there; dedup compares ok
videos only), the new groups get the same rules. A step of a command this module does not know is named
as not applied, never skipped in silence.
"""

from __future__ import annotations

from cosmo_data.corpus.dedup import dedup_corpus
from cosmo_data.corpus.filter import filter_corpus
from cosmo_data.corpus.rewrite import applied_steps
from cosmo_data.schemas.config import CurationConfig
from cosmo_data.storage import AnyPath, location


def reapply_curation(corpus: AnyPath | str) -> list[str]:
    """Run every recorded step again (see the module); one line per step saying what it did."""
    corpus = location(corpus)
    lines = []
    for step in applied_steps(corpus):
        command = step.get("command")
        if command == "filter":
            summary = filter_corpus(corpus, CurationConfig.model_validate(step["curation"]), record=False)
            videos = sum(dropped.get("videos", 0) for dropped in summary.dropped.values())
            lines.append(f"filter (its rules applied again): {videos} videos filtered now")
        elif command == "dedup":
            found = dedup_corpus(corpus, step["threshold"], step["n_clusters"], record=False)
            lines.append(
                f"dedup (cosine >= {step['threshold']:g} again): {found.exact_videos + found.near_videos} videos "
                f"and {found.near_clips} clips marked now"
            )
        else:
            lines.append(f"{command}: NOT applied to the groups written now (run `cosmo-data {command}` again)")
    return lines
