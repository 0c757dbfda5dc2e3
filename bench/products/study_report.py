"""``study.md``, ``study.csv`` and ``study.png``/``.pdf``: what ``bench study`` decided and how.

Per comparison: the verdict, the seeds it took, the last interval, why it stopped, and every look
(seeds, the α spent there, the interval at confidence 1 − α). The figure draws each comparison's
interval narrowing as seeds were added, with the ±difference band: a comparison stops when its
interval leaves 0 behind or fits inside the band. Written atomically after every look, so a killed
study leaves a report saying where it stood.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from bench.products.report.common import FIGURES_NOT_DRAWN
from bench.products.report.figures import new_figure, save_figure
from bench.products.study import Study, Track
from bench.store.atomic import write_atomic

COLUMNS = (
    "base",
    "variant",
    "scheme",
    "attack",
    "look",
    "seeds",
    "alpha",
    "difference",
    "low",
    "high",
    "p_value",
    "between_seed_sd",
    "decision",
    "reason",
)


def _number(value: float, digits: int = 2) -> str:
    return "" if not math.isfinite(value) else f"{value:.{digits}f}"


def study_csv(study: Study) -> str:
    """One row per look of each comparison; ``decision`` is empty where the study went on."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for track in study.tracks:
        for index, look in enumerate(track.looks, 1):
            writer.writerow(
                [
                    study.base,
                    track.variant,
                    track.scheme,
                    track.attack,
                    index,
                    look.seeds,
                    f"{look.alpha:.6g}",
                    _number(look.difference, 3),
                    _number(look.low, 3),
                    _number(look.high, 3),
                    f"{look.p_value:.4g}" if math.isfinite(look.p_value) else "",
                    _number(look.between_seed_sd, 3),
                    look.decision or "",
                    "" if look.decision is None else track.reason,
                ]
            )
    return buffer.getvalue()


def _interval(low: float, high: float) -> str:
    return "[—]" if not (math.isfinite(low) and math.isfinite(high)) else f"[{low:+.1f}, {high:+.1f}]"


def study_markdown(study: Study, figure: str | None = "study.png") -> str:
    """``figure``: the figure's file name beside study.md, or None where it was not drawn (``--no-figures``)."""
    design = study.design
    state = "finished" if study.finished else "in progress (rerun the same command to continue)"
    lines = [
        f"# Study: {', '.join(study.variants)} vs {study.base} — {state}",
        "",
        "Question: does the *method* differ (seeds as the unit, per-image records nested in them;",
        'bench.products.method_level), not "do two trained classifiers differ" (one seed each).',
        "",
        f"Design: looks at {', '.join(map(str, design.looks))} seeds; α = {study.alpha:g} over "
        f"{len(study.tracks)} comparison(s) (Bonferroni: {design.alpha:.4g} each), spent over the looks by "
        "Lan-DeMets O'Brien-Fleming-type spending (Lan & DeMets 1983, Biometrika 70:659), each look at its "
        "increment (union bound across looks: conservative); smallest difference of interest "
        f"±{design.difference:g} points.",
        "",
        "α per look: " + ", ".join(f"{seeds} seeds {alpha:.3g}" for seeds, alpha in zip(design.looks, design.alphas)),
        "",
        "| Variant | Scheme | Attack | Verdict | Seeds | Δ (points) [interval] | Stopped because |",
        "|---|---|---|---|---:|---|---|",
    ]
    for track in study.tracks:
        last = track.looks[-1] if track.looks else None
        shown = "" if last is None else f"{last.difference:+.1f} {_interval(last.low, last.high)}"
        lines.append(
            f"| {track.variant} | {track.scheme} | {track.attack} | {track.decision or 'in progress'} | "
            f"{track.seeds} | {shown} | {track.reason} |"
        )
    lines += ["", "## Look by look", ""]
    for track in study.tracks:
        lines.append(f"- {track.variant} {track.scheme} {track.attack}: " + _history(track))
    lines += [
        "",
        f"![interval narrowing as seeds were added]({figure})" if figure else f"Figure: {FIGURES_NOT_DRAWN}.",
        "",
        "Δ = variant − base; the interval at each look has confidence 1 − (that look's α). A comparison "
        "stops when its interval excludes 0 (better/worse), lies inside ±difference (no difference "
        "that matters), or the seed budget is spent (undecided).",
    ]
    if study.command:
        lines += ["", f"Command: `{study.command}`"]
    return "\n".join(lines) + "\n"


def _history(track: Track) -> str:
    return "; ".join(
        f"{look.seeds} seeds (α {look.alpha:.2g}): {look.difference:+.1f} {_interval(look.low, look.high)}"
        f" → {look.decision or 'continue'}"
        for look in track.looks
    )


def study_figure(study: Study, stem: Path) -> list[Path]:
    """One panel per comparison: the interval at each look against the seeds, 0 and the ±difference band."""
    count = len(study.tracks)
    columns = min(3, count)
    rows = -(-count // columns)
    figure = new_figure(3.6 * columns, 2.8 * rows)
    band = study.design.difference
    for index, track in enumerate(study.tracks):
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.axhspan(-band, band, color="0.9", label=f"±{band:g} points")
        axes.axhline(0.0, color="0.4", linewidth=0.8)
        shown = [look for look in track.looks if math.isfinite(look.low) and math.isfinite(look.high)]
        if shown:
            seeds = [look.seeds for look in shown]
            centre = [look.difference for look in shown]
            errors = [[look.difference - look.low for look in shown], [look.high - look.difference for look in shown]]
            axes.errorbar(seeds, centre, yerr=errors, fmt="o-", color="C0", capsize=3)
        axes.set_xticks(list(study.design.looks))
        axes.set_xlim(study.design.looks[0] - 0.5, study.design.looks[-1] + 0.5)
        axes.set_xlabel("seeds")
        axes.set_ylabel("Δ points (variant − base)")
        axes.set_title(f"{track.variant} {track.scheme} {track.attack}: {track.decision or '…'}", fontsize=8)
    return save_figure(figure, stem)


def write_study(study: Study, reports_dir: Path, figures: bool = True) -> list[Path]:
    """study.md, study.csv and, unless ``figures`` is off (``--no-figures``: drawing it is most of the write's
    time, and a study writes after every look), the figure; each written atomically."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    drawn = study_figure(study, reports_dir / "study") if figures else []
    for stale in () if figures else (reports_dir / "study.png", reports_dir / "study.pdf"):
        stale.unlink(missing_ok=True)  # an earlier look's figure, which study.md no longer shows
    return [
        write_atomic(reports_dir / "study.md", study_markdown(study, drawn[0].name if drawn else None)),
        write_atomic(reports_dir / "study.csv", study_csv(study)),
        *drawn,
    ]
