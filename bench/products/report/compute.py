"""Robust accuracy against compute: what each method's robustness cost, in (GPU-)hours.

A number's cost is its run's pretraining time (``done.json``'s ``pretrain_wall_s``; a run that reused
another run's encoder is charged the donor's, named by ``encoder_from``) plus the finetuning and
evaluation time of its scheme (the row's ``wall_s``). On CUDA that is GPU time (one GPU per run).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.products.report.common import Artifact, MethodOrder
from bench.products.report.figures import method_style, new_figure, outside_legend, save_figure
from bench.products.report.tables import Table, aggregate, cells_of, row_labels
from bench.store.results import RunDir


def pretrain_seconds(run_ids: list[str], runs_dir: Path) -> pd.Series:
    """Pretraining wall time per run (NaN where ``done.json`` is missing or unreadable)."""

    def seconds(run_id: str, hops: int = 2) -> float:
        done = RunDir.read_json_or_none(RunDir(runs_dir / run_id).done)
        if not isinstance(done, dict):
            return np.nan
        donor = done.get("encoder_from", run_id)
        if donor != run_id and hops:
            return seconds(donor, hops - 1)
        wall_s = done.get("pretrain_wall_s")  # None: an imported encoder, trained elsewhere (bench.runs.imported)
        return np.nan if wall_s is None else float(wall_s)

    return pd.Series({run_id: seconds(run_id) for run_id in run_ids}, dtype=float)


def _unit(hours: float, devices: set[str]) -> tuple[float, str]:
    """Scale (hours → shown unit) and axis label: GPU time on CUDA, wall-clock time otherwise."""
    gpu = bool(devices) and all(device.startswith("cuda") for device in devices)
    kind = "GPU-{}" if gpu else "wall-clock {} on " + ", ".join(sorted(devices))
    return (1.0, kind.format("hours")) if hours >= 1 else (60.0, kind.format("minutes"))


def plot_robustness_vs_compute(table: Table, runs_dir: Path, figures_dir: Path, order: MethodOrder) -> Artifact:
    """Per scheme, each method's robust accuracy (AA, else PGD-20) against its compute, seeds as faint dots."""
    title = f"Robust accuracy vs compute — {table.key.title()}"
    attack = "autoattack" if any(key[2] == "autoattack" for key in table.cells) else "pgd20"
    rows = table.rows.assign(label=row_labels(table.rows))
    rows = rows[(rows["attack"] == attack) & rows["scheme"].isin(table.schemes)]
    if rows.empty:
        return Artifact("figure", title, [], "no PGD-20 or AA rows")
    pretrain = pretrain_seconds(list(rows["run_id"].unique()), Path(runs_dir))
    hours = (rows["run_id"].map(pretrain) + rows["wall_s"]) / 3600
    rows = rows.assign(hours=hours).dropna(subset=["hours"])
    if rows.empty:
        return Artifact(
            "figure",
            title,
            [],
            f"no {attack} row whose run recorded both its pretraining time "
            "(done.json) and its finetuning time (wall_s)",
        )
    cost = cells_of(aggregate(rows.assign(value=rows["hours"]), ["label", "scheme"]))
    robust = cells_of(aggregate(rows, ["label", "scheme"]))
    scale, unit = _unit(max(cell.mean for cell in cost.values()), set(rows["device"]))
    schemes = [scheme for scheme in table.schemes if any(key[1] == scheme for key in cost)]
    figure = new_figure(3.6 * len(schemes) + 1.6, 3.4)
    handles: dict[str, object] = {}
    for axis, scheme in zip(figure.subplots(1, len(schemes), squeeze=False, sharey=True)[0], schemes):
        for label in order.sort(label for label, s in cost if s == scheme):
            style, x, y = method_style(label, order), cost[label, scheme], robust[label, scheme]
            if x.n > 1:
                axis.plot(
                    np.array(x.values) * scale,
                    y.values,
                    linestyle="none",
                    marker=style["marker"],
                    color=style["color"],
                    alpha=0.3,
                    markersize=3,
                )
            (handles[label],) = axis.plot(
                [x.mean * scale], [y.mean], linestyle="none", marker=style["marker"], color=style["color"], markersize=6
            )
        axis.set(title=scheme, xlabel=unit, ylabel=f"{'AA' if attack == 'autoattack' else 'PGD-20'} accuracy (%)")
        axis.grid(alpha=0.3)
    outside_legend(figure, list(handles.values()), list(handles))
    seeds = max(cell.n for cell in cost.values())
    note = f"mean of {seeds} seeds, faint: each seed" if seeds > 1 else "one run per method"
    figure.suptitle(f"{table.key.title()}\n(pretraining + finetuning and evaluation of the scheme; {note})", fontsize=8)
    paths = save_figure(figure, figures_dir / f"compute_{table.key.slug()}")
    return Artifact("figure", title, paths)
