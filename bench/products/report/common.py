"""What every part of the report shares: the artifact record, method order, ε and name formatting.

The report reads the store only (docs/design.md §5: a report never trains) and imports no torch; the
method order comes from the caller (``bench.cli.app`` passes the registry's), never from a list here.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

MISSING = "–"
SUSPECT_MARK = "†"
VARIANT_SUFFIXES = ("ip", "hn", "iphn")  # the A-InfoNCE variants of a base method (bench.methodkit.variants)


@dataclass
class Artifact:
    """Something the index lists: a table or figure and its files, or why it was not written."""

    kind: str
    title: str
    paths: list[Path]
    skipped: str | None = None


FIGURES_NOT_DRAWN = "not drawn (--no-figures)"  # the index's and the page's note for a report without figures


@dataclass(frozen=True)
class MethodOrder:
    """The order of methods in every table, legend and list: the caller's (the registry's), then any
    other method alphabetically. A row label ``method [config]`` sorts with its method."""

    names: tuple[str, ...] = ()

    def key(self, label: str) -> tuple[int, str]:
        method = label_method(label)
        return (self.names.index(method) if method in self.names else len(self.names), label)

    def sort(self, labels: Iterable[str]) -> list[str]:
        return sorted(set(labels), key=self.key)

    def families(self) -> list[str]:
        """The base methods (no A-InfoNCE variant suffix), in order: one colour each in the figures."""
        return [name for name in self.names if variant_of(name)[1] == ""]


def variant_of(label: str) -> tuple[str, str]:
    """(base method, A-InfoNCE variant or "") of a method or row label: ``rocl-iphn`` → (rocl, iphn)."""
    base, _, suffix = label_method(label).rpartition("-")
    return (base, suffix) if base and suffix in VARIANT_SUFFIXES else (label_method(label), "")


def label_method(label: str) -> str:
    """The method of a table row label (``acl [3f2a…]`` → ``acl``; see ``tables.row_labels``)."""
    return label.split(" [", 1)[0]


def in_255ths(epsilon: float) -> int | None:
    """k when ε = k/255 (the papers' budgets), else None."""
    steps = epsilon * 255
    return round(steps) if steps >= 0.5 and abs(steps - round(steps)) < 1e-3 else None


def format_epsilon(epsilon: float | None) -> str:
    """``8/255 (0.03137)`` for budgets on the 1/255 grid, else the plain number (e.g. ``0.1``)."""
    if epsilon is None:
        return "unspecified"
    steps = in_255ths(epsilon)
    return f"{epsilon:g}" if steps is None else f"{steps}/255 ({epsilon:.4g})"


def epsilon_slug(epsilon: float | None) -> str:
    if epsilon is None:
        return "na"
    steps = in_255ths(epsilon)
    return f"{epsilon:g}".replace(".", "p") if steps is None else f"{steps}of255"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_+-]+", "-", text)


def round_epsilon(epsilon: float | None) -> float | None:
    """ε as a grouping key: Python's correctly rounded 6 decimals (numpy's rounding differs in the last bit)."""
    return None if epsilon is None or pd.isna(epsilon) else round(float(epsilon), 6)


def preset_banner(preset: str | None) -> str | None:
    """The warning every non-paper table carries (docs/design.md §5: a smoke table is a demonstration)."""
    if preset in (None, "paper"):
        return None
    return f"{preset} preset: a working demonstration, not a result to compare with papers"


def tags(flags: Iterable[str], suspect: bool | None = None) -> tuple[str, ...]:
    """The sorted distinct tags of ``;``-joined flag strings; ``suspect`` selects suspect tags or the others."""
    found = {tag.strip() for text in flags for tag in str(text).split(";") if tag.strip()}
    return tuple(sorted(tag for tag in found if suspect is None or tag.startswith("suspect") == suspect))


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def latex_escape(text: str) -> str:
    """Escape LaTeX specials in plain text (method and dataset names, notes)."""
    replacements = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
        "–": "--",
        "±": r"$\pm$",
        "→": r"$\to$",
        "ε": r"$\epsilon$",
        "∞": r"$\infty$",
        "·": r"$\cdot$",
        "†": r"$^\dagger$",
        "Δ": r"$\Delta$",
        "−": "-",
        "≥": r"$\geq$",
        "α": r"$\alpha$",
        "▲": r"$\uparrow$",
        "▼": r"$\downarrow$",
    }
    return "".join(replacements.get(char, char) for char in text)
