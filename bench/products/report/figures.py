"""Figures of one results table: robust vs clean accuracy, and bars with per-seed dots (PNG + PDF).

Drawn on ``matplotlib.figure.Figure`` (Agg canvas, no pyplot global state), saved atomically. Every
figure styles a method the same way (``method_style``): one colour per method family, one marker and
line style per A-InfoNCE variant, so 13+ methods stay tellable apart; legends sit outside the axes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.products.report.common import VARIANT_SUFFIXES, Artifact, MethodOrder, variant_of
from bench.products.report.tables import TABLE_ATTACKS, Table
from bench.store.atomic import write_atomic

VARIANT_MARKERS = dict(zip(("", *VARIANT_SUFFIXES), "os^D"))
VARIANT_LINES = dict(zip(("", *VARIANT_SUFFIXES), ("-", "--", ":", "-.")))
# filled / hollow / half-filled marker (APGD-CE: the smoke preset's stand-in for AA, bench.products.report.tables)
ROBUST_ATTACKS = (("pgd20", "PGD-20", "full"), ("autoattack", "AA", "none"), ("apgd-ce", "APGD-CE", "bottom"))


def new_figure(width: float, height: float):
    from matplotlib.figure import Figure  # Agg canvas, no pyplot global state

    return Figure(figsize=(width, height), layout="constrained")


def save_figure(figure: Any, stem: Path) -> list[Path]:
    """Save as PNG and PDF (atomically); ``stem`` has no suffix.

    The constrained layout is solved once, for the PNG, and kept for the PDF: solving it again for the
    second format moved the axes by under 0.2 % of the figure and cost a quarter of a report's time."""
    paths = []
    for fmt in ("png", "pdf"):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=fmt, dpi=150)
        figure.set_layout_engine("none")  # keep the positions the first save laid out
        paths.append(write_atomic(Path(f"{stem}.{fmt}"), buffer.getvalue()))
    return paths


def method_style(method: str, order: MethodOrder) -> dict[str, Any]:
    """Colour per method family (in the caller's order; families beyond ten reuse colours with another
    marker set), marker and line style per A-InfoNCE variant (base ●, -ip ■, -hn ▲, -iphn ◆)."""
    base, variant = variant_of(method)
    families = order.families()
    index = families.index(base) if base in families else len(families) + sum(map(ord, base)) % 5
    marker = VARIANT_MARKERS[variant] if index < 10 else "PXhv"[index // 10 % 4]
    return {"color": f"C{index % 10}", "marker": marker, "linestyle": VARIANT_LINES[variant]}


def outside_legend(figure: Any, handles: Sequence[Any], labels: Sequence[str]) -> None:
    """One legend for the whole figure, right of every axes (constrained layout makes room for it, so
    13+ entries never squeeze the axes); a column per 20 entries keeps it within the figure's height."""
    figure.legend(handles, labels, loc="outside right center", fontsize=7, frameon=False, ncols=-(-len(labels) // 20))


def _figure_stem(figures_dir: Path, name: str, table: Table) -> Path:
    return figures_dir / f"{name}_{table.key.slug()}"


def plot_robust_vs_clean(table: Table, figures_dir: Path, order: MethodOrder) -> Artifact:
    """Per scheme, each method's robust accuracy (PGD-20 filled, AA hollow, APGD-CE half, joined) against its
    clean accuracy.

    A non-adversarial anchor (robust accuracy under a quarter of the median method's) squeezes the
    adversarial methods into a corner; a second row then repeats each panel without it."""
    title = f"Robust vs clean accuracy — {table.key.title()}"
    points = {
        scheme: {method: point for method in table.methods if (point := _tradeoff_point(table, method, scheme))}
        for scheme in table.schemes
    }
    schemes = [scheme for scheme in table.schemes if points[scheme]]
    if not schemes:
        return Artifact("figure", title, [], "no method has both clean and robust accuracy")
    zoomed = {scheme: _without_anchors(points[scheme]) for scheme in schemes}
    rows = 2 if any(len(zoomed[s]) not in (0, len(points[s])) for s in schemes) else 1
    figure = new_figure(3.6 * len(schemes) + 1.6, 3.3 * rows + 0.3)
    grid = figure.subplots(rows, len(schemes), squeeze=False)
    for column, scheme in enumerate(schemes):
        _tradeoff_panel(grid[0][column], points[scheme], order, scheme)
        if rows == 2:
            _tradeoff_panel(grid[1][column], zoomed[scheme], order, f"{scheme}, without non-adversarial anchors")
    handles = {
        method: _key(method_style(method, order)["marker"], method_style(method, order)["color"])
        for method in table.methods
        if any(method in points[scheme] for scheme in schemes)
    }
    measured = {attack for _, _, attack in table.cells}
    shown = [(label, fill) for attack, label, fill in ROBUST_ATTACKS if attack in measured]
    keys = [_key("o", "0.3", fill) for _, fill in shown]
    outside_legend(figure, [*handles.values(), *keys], [*handles, *(label for label, _ in shown)])
    figure.suptitle(table.key.title(), fontsize=9)
    return Artifact("figure", title, save_figure(figure, _figure_stem(figures_dir, "tradeoff", table)))


def _tradeoff_panel(
    axis: Any, points: dict[str, tuple[float, dict[str, float]]], order: MethodOrder, title: str
) -> None:
    for method, (clean, robust) in points.items():
        style = method_style(method, order)
        axis.plot([clean] * len(robust), list(robust.values()), color=style["color"], linewidth=0.8, alpha=0.6)
        for attack, _, fill in ROBUST_ATTACKS:
            if attack in robust:
                axis.plot(
                    [clean],
                    [robust[attack]],
                    linestyle="none",
                    marker=style["marker"],
                    color=style["color"],
                    fillstyle=fill,
                    markersize=6,
                )
    axis.set_title(title, fontsize=9)
    axis.set(xlabel="clean accuracy (%)", ylabel="robust accuracy (%)")
    axis.grid(alpha=0.3)


def _without_anchors(points: dict[str, tuple[float, dict[str, float]]]) -> dict[str, tuple[float, dict[str, float]]]:
    median = float(np.median([max(robust.values()) for _, robust in points.values()]))
    return {method: point for method, point in points.items() if max(point[1].values()) >= median / 4}


def _tradeoff_point(table: Table, method: str, scheme: str) -> tuple[float, dict[str, float]] | None:
    """(clean accuracy, {attack: robust accuracy}) of one method and scheme, or None without both."""
    clean = table.cells.get((method, scheme, "clean"))
    robust = {
        attack: cell.mean for attack, _, _ in ROBUST_ATTACKS if (cell := table.cells.get((method, scheme, attack)))
    }
    return (clean.mean, robust) if clean and robust else None


def _key(marker: str, color: str, fill: str = "full", size: float = 6) -> Any:
    """A legend entry drawn as one marker."""
    from matplotlib.lines import Line2D

    return Line2D([], [], linestyle="none", marker=marker, color=color, fillstyle=fill, markersize=size)


def plot_bars(table: Table, figures_dir: Path) -> Artifact:
    """One panel per measured attack: bars per method grouped by scheme, each seed a dot on its bar,
    a std error bar only where there are ≥ 2 seeds (one run has no spread to show)."""
    title = f"Accuracy per method and scheme — {table.key.title()}"
    attacks = [(a, label) for a, label in TABLE_ATTACKS if any(key[2] == a for key in table.cells)]
    if not attacks:
        return Artifact("figure", title, [], "no clean, PGD-20 or AA accuracy")
    figure = new_figure(max(6.5, 1.0 * len(table.methods) + 3), 2.4 * len(attacks) + 0.4)
    positions, width = np.arange(len(table.methods)), 0.8 / len(table.schemes)
    rotation = {"rotation": 30, "ha": "right"} if len(table.methods) > 4 else {}
    for row, (attack, label) in enumerate(attacks):
        axis = figure.add_subplot(len(attacks), 1, row + 1)
        for index, scheme in enumerate(table.schemes):
            centres = positions + (index - (len(table.schemes) - 1) / 2) * width
            cells = [table.cells.get((method, scheme, attack)) for method in table.methods]
            heights = [cell.mean if cell else np.nan for cell in cells]
            errors = [cell.std if cell and cell.std is not None else np.nan for cell in cells]
            axis.bar(centres, heights, width, label=scheme, alpha=0.85)
            if not all(np.isnan(errors)):
                axis.errorbar(centres, heights, yerr=errors, fmt="none", ecolor="0.2", capsize=2, linewidth=0.8)
            for centre, cell in zip(centres, cells):
                if cell and len(cell.values) > 1:
                    spread = np.linspace(-width / 4, width / 4, len(cell.values))
                    axis.plot(centre + spread, cell.values, "o", color="black", markersize=2.2, alpha=0.7)
        axis.set_xticks(positions, table.methods, fontsize=8, **rotation)
        axis.set_xlim(-0.6, len(table.methods) - 0.4)
        axis.set_ylabel(f"{label} (%)")
    seeds = max((cell.n for cell in table.cells.values()), default=1)
    handles, labels = figure.axes[0].get_legend_handles_labels()
    if seeds > 1:
        handles, labels = [*handles, _key("o", "black", size=2.5)], [*labels, "seeds"]
    figure.axes[0].legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    note = "dots: seeds; error bars: sample std over seeds" if seeds > 1 else "one seed per method: no error bars"
    figure.suptitle(f"{table.key.title()}\n({note}; missing bars: not measured)", fontsize=8)
    return Artifact("figure", title, save_figure(figure, _figure_stem(figures_dir, "bars", table)))
