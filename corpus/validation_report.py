"""What `cosmo-data validate` found: problems and counts, and their one-screen report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Ids listed in one message before "(+N more)".
IDS_SHOWN = 5
# Problems printed by format_report; the report object keeps them all.
PROBLEMS_SHOWN = 50


@dataclass
class ValidationReport:
    out: Path
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, message: str) -> None:
        self.problems.append(message)

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n


def ids(values: Any) -> str:
    """Sorted values (all str or all int), the first few of them."""
    values = [str(v) for v in sorted(values)]
    shown = ", ".join(values[:IDS_SHOWN])
    return shown + (f" (+{len(values) - IDS_SHOWN} more)" if len(values) > IDS_SHOWN else "")


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def format_report(report: ValidationReport) -> str:
    counts = report.counts
    facts = [
        f"{counts.get('groups', 0)} groups",
        f"{counts.get('videos', 0)} videos ({counts.get('videos_ok', 0)} ok)",
        f"{counts.get('documents', 0)} documents",
    ]
    facts += [
        f"{name.removeprefix('samples.')} {n} samples" for name, n in counts.items() if name.startswith("samples.")
    ]
    facts.append(f"{counts.get('images_decoded', 0)} images decoded")
    verdict = "valid" if report.ok else f"INVALID: {plural(len(report.problems), 'problem')}"
    lines = [f"{report.out}: {verdict}", "  " + " · ".join(facts)]
    lines += [f"  - {problem}" for problem in report.problems[:PROBLEMS_SHOWN]]
    if len(report.problems) > PROBLEMS_SHOWN:
        lines.append(f"  … and {len(report.problems) - PROBLEMS_SHOWN} more problems")
    return "\n".join(lines)


@dataclass
class TableFacts:
    """What the shard checks need from the tables."""

    doc_ids: set[str]
    expected: dict[str, set[str]]  # format -> doc_ids it must hold
    frame_indices: dict[str, set[int]]  # video_id -> frames.frame_idx
