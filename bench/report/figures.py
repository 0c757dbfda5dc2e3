"""Figures of one results table: robust vs clean accuracy, and grouped bars (PNG + PDF).

Drawn on ``matplotlib.figure.Figure`` (Agg canvas, no pyplot global state), saved atomically.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from bench.atomic import write_atomic
from bench.report.common import VARIANT_SUFFIXES, Artifact, MethodOrder, variant_of
from bench.report.tables import TABLE_ATTACKS, Table

VARIANT_LINES = dict(zip(VARIANT_SUFFIXES, ("--", ":", "-.")))
FAMILY_MARKERS = "osD^vP*Xh"


def new_figure(width: float, height: float):
    from matplotlib.figure import Figure  # Agg canvas, no pyplot global state

    return Figure(figsize=(width, height), layout="constrained")


def save_figure(figure: Any, stem: Path) -> list[Path]:
    """Save as PNG and PDF (atomically); ``stem`` has no suffix."""
    paths = []
    for fmt in ("png", "pdf"):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=fmt, dpi=150)
        paths.append(write_atomic(Path(f"{stem}.{fmt}"), buffer.getvalue()))
    return paths


def method_style(method: str, order: MethodOrder) -> dict[str, Any]:
    """One colour and marker per method family (in the caller's order), one line style per A-InfoNCE
    variant: 13 methods stay tellable apart where a 10-colour cycle would repeat."""
    base, variant = variant_of(method)
    families = order.families()
    index = families.index(base) if base in families else len(families) + sum(map(ord, base)) % 5
    return {"color": f"C{index % 10}", "marker": FAMILY_MARKERS[index % len(FAMILY_MARKERS)],
            "linestyle": VARIANT_LINES.get(variant, "-")}


def _figure_stem(figures_dir: Path, name: str, table: Table) -> Path:
    return figures_dir / f"{name}_{table.key.slug()}"


def plot_robust_vs_clean(table: Table, figures_dir: Path) -> Artifact:
    """Per scheme, each method's robust (PGD-20 ●, AA ▲) against clean accuracy: the trade-off at a glance."""
    title = f"Robust vs clean accuracy — {table.key.title()}"
    points = {scheme: _tradeoff_points(table, scheme) for scheme in table.schemes}
    schemes = [scheme for scheme in table.schemes if points[scheme]]
    if not schemes:
        return Artifact("figure", title, [], table.rows, "no method has both clean and robust accuracy")
    figure = new_figure(3.8 * len(schemes), 3.4)
    for axis, scheme in zip(figure.subplots(1, len(schemes), squeeze=False)[0], schemes):
        for attack, marker, label in (("pgd20", "o", "PGD-20"), ("autoattack", "^", "AA")):
            chosen = [point for point in points[scheme] if point[1] == attack]
            if chosen:
                axis.scatter([p[2] for p in chosen], [p[3] for p in chosen], marker=marker, label=label)
            for method, _, clean, robust in chosen:
                axis.annotate(method, (clean, robust), xytext=(3, 3), textcoords="offset points", fontsize=7)
        axis.set(title=scheme, xlabel="clean accuracy (%)", ylabel="robust accuracy (%)")
        axis.legend(fontsize=7)
    figure.suptitle(table.key.title(), fontsize=9)
    return Artifact("figure", title, save_figure(figure, _figure_stem(figures_dir, "tradeoff", table)), table.rows)


def _tradeoff_points(table: Table, scheme: str) -> list[tuple[str, str, float, float]]:
    points = []
    for method in table.methods:
        clean = table.cells.get((method, scheme, "clean"))
        for attack in ("pgd20", "autoattack"):
            robust = table.cells.get((method, scheme, attack))
            if clean and robust:
                points.append((method, attack, clean.mean, robust.mean))
    return points


def plot_bars(table: Table, figures_dir: Path) -> Artifact:
    """One panel per measured attack: bars per method, grouped by scheme, with std error bars."""
    title = f"Accuracy per method and scheme — {table.key.title()}"
    attacks = [(a, label) for a, label in TABLE_ATTACKS if any(key[2] == a for key in table.cells)]
    if not attacks:
        return Artifact("figure", title, [], table.rows, "no clean, PGD-20 or AA accuracy")
    figure = new_figure(max(6.5, 1.0 * len(table.methods) + 3), 2.4 * len(attacks) + 0.4)
    positions, width = np.arange(len(table.methods)), 0.8 / len(table.schemes)
    rotation = {"rotation": 30, "ha": "right"} if len(table.methods) > 4 else {}
    for row, (attack, label) in enumerate(attacks):
        axis = figure.add_subplot(len(attacks), 1, row + 1)
        for index, scheme in enumerate(table.schemes):
            cells = [table.cells.get((method, scheme, attack)) for method in table.methods]
            heights = [cell.mean if cell else math.nan for cell in cells]
            errors = [(cell.std or 0.0) if cell else 0.0 for cell in cells]
            axis.bar(positions + (index - (len(table.schemes) - 1) / 2) * width, heights, width, yerr=errors,
                     capsize=2, label=scheme)
        axis.set_xticks(positions, table.methods, fontsize=8, **rotation)
        axis.set_xlim(-0.6, len(table.methods) - 0.4)
        axis.set_ylabel(f"{label} (%)")
        if row == 0:
            axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    figure.suptitle(table.key.title() + "\n(missing bars: not measured)", fontsize=8)
    return Artifact("figure", title, save_figure(figure, _figure_stem(figures_dir, "bars", table)), table.rows)
