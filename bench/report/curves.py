"""Curves: pretraining loss per step (from each run's history) and PGD-20 accuracy against ε."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bench.config import SCHEMES
from bench.report.common import Artifact, MethodOrder, round_epsilon, slug
from bench.report.figures import method_style, new_figure, save_figure
from bench.report.tables import DATA, Cell, Table, aggregate, cells_of
from bench.results import RunDir

Curves = dict[tuple[str, str], list[tuple[float, Cell]]]  # (method, scheme) -> [(ε, cell)]


def read_history(path: Path) -> pd.DataFrame:
    """The numeric columns of a ``pretrain_history.csv`` (empty cells become NaN)."""
    history = pd.read_csv(path)
    return history.apply(pd.to_numeric, errors="coerce").dropna(axis="columns", how="all") if len(history) else history


def _history_runs(rows: pd.DataFrame, runs_dir: Path, order: MethodOrder) -> pd.DataFrame:
    """The first row of each run behind ``rows`` whose run directory holds a loss history, in method order."""
    runs = rows.drop_duplicates("run_id").copy()
    runs["history"] = [RunDir(runs_dir / run_id).history for run_id in runs["run_id"]]
    runs = runs[[path.is_file() for path in runs["history"]]]
    runs["rank"] = runs["method"].map(lambda method: order.key(method)[0])
    return runs.sort_values(["rank", "method", "seed", "run_id"], kind="stable")


def plot_loss_curves(rows: pd.DataFrame, data_title: str, runs_dir: Path, figures_dir: Path,
                     order: MethodOrder) -> Artifact:
    """Pretraining loss per step of the runs behind ``rows`` (raw, faint; moving average, solid).

    One figure per (dataset, eval_dataset, preset): pretraining does not depend on the attack budget.
    """
    title = f"Pretraining loss — {data_title}"
    runs = _history_runs(rows, Path(runs_dir), order)
    curves = [(run, history) for run in runs.itertuples() if "loss" in (history := read_history(run.history))]
    if not curves:
        return Artifact("figure", title, [], rows, "no pretrain_history.csv with a loss column for these runs")
    figure = new_figure(6.0, 3.6)
    axis = figure.subplots()
    for run, history in curves:
        x = history["step"] if "step" in history else np.arange(len(history))
        label = run.method + ("" if pd.isna(run.seed) else f" (seed {run.seed})")
        line, = axis.plot(x, _moving_average(history["loss"].to_numpy()), label=label)
        axis.plot(x, history["loss"], color=line.get_color(), alpha=0.25, linewidth=0.8)
    axis.set(xlabel="step", ylabel="pretraining loss", title=data_title)
    axis.title.set_fontsize(9)
    axis.legend(fontsize=7)
    paths = save_figure(figure, figures_dir / slug(f"loss_{data_title.replace(' · preset ', '_')}"))
    return Artifact("figure", title, paths, rows[rows["run_id"].isin(runs["run_id"])])


def loss_curve_artifacts(tables: Sequence[Table], runs_dir: Path, figures_dir: Path,
                         order: MethodOrder) -> list[Artifact]:
    """Loss curves for the runs of every table, merged over tables that differ only in ε."""
    merged: dict[tuple[str, str, str], list[pd.DataFrame]] = {}
    for table in tables:
        merged.setdefault((table.key.dataset, table.key.eval_dataset, table.key.preset), []).append(table.rows)
    return [plot_loss_curves(pd.concat(frames), f"{dataset} → {eval_dataset} · preset {preset}", runs_dir,
                             figures_dir, order)
            for (dataset, eval_dataset, preset), frames in merged.items()]


def _moving_average(values: np.ndarray) -> np.ndarray:
    window = max(1, len(values) // 25)
    if window == 1:
        return values
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def curve_points(results: pd.DataFrame, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """The PGD-20 rows on an ε curve: ``accuracy_vs_epsilon`` rows plus the main PGD-20 row of the same
    runs (the curve's point at the main ε), with their rounded ε as ``point``; ``methods`` selects."""
    curve_runs = results.loc[results["metric"] == "accuracy_vs_epsilon", "run_id"]
    on_curve = (results["metric"] == "accuracy_vs_epsilon") | (
        (results["metric"] == "accuracy") & results["run_id"].isin(curve_runs))
    chosen = on_curve & (results["attack"] == "pgd20") & results["epsilon"].notna()
    if methods:
        chosen &= results["method"].isin(list(methods))
    return results[chosen].assign(point=results["epsilon"].map(round_epsilon))


def epsilon_series(results: pd.DataFrame, methods: Sequence[str] | None = None) -> dict[tuple[str, str, str], Curves]:
    """PGD-20 accuracy of the same classifiers at several ε per (data, preset) and (method, scheme),
    mean ± std over seeds at each ε; a curve is kept only with ≥ 2 distinct ε."""
    stats = aggregate(curve_points(results, methods), [*DATA, "method", "scheme", "point"])
    series: dict[tuple[str, str, str], Curves] = {}
    for (*data, method, scheme, epsilon), cell in sorted(cells_of(stats).items()):
        series.setdefault(tuple(data), {}).setdefault((method, scheme), []).append((epsilon, cell))
    return {data: kept for data, curves in series.items()
            if (kept := {key: curve for key, curve in curves.items() if len(curve) >= 2})}


def plot_epsilon_curves(results: pd.DataFrame, figures_dir: Path, order: MethodOrder,
                        methods: Sequence[str] | None = None) -> list[Artifact]:
    """Accuracy under PGD-20 against ε, one panel per scheme, for methods measured at ≥ 2 budgets."""
    series = epsilon_series(results, methods)
    if not series:
        return [Artifact("figure", "Accuracy vs ε (PGD-20)", [], None, "no method has PGD-20 rows at ≥ 2 ε values")]
    artifacts = []
    for (dataset, eval_dataset, preset), curves in sorted(series.items()):
        schemes = [scheme for scheme in SCHEMES if any(key[1] == scheme for key in curves)]
        figure = new_figure(3.8 * len(schemes) + 1.6, 3.4)
        for axis, scheme in zip(figure.subplots(1, len(schemes), squeeze=False)[0], schemes):
            for (method, curve_scheme), points in sorted(curves.items(), key=lambda item: order.key(item[0][0])):
                if curve_scheme == scheme:
                    axis.errorbar([p[0] for p in points], [p[1].mean for p in points],
                                  yerr=[p[1].std or 0.0 for p in points], capsize=2, label=method,
                                  markersize=4, **method_style(method, order))
            axis.set(title=scheme, xlabel="ε (L∞)", ylabel="PGD-20 accuracy (%)")
        handles, labels = axis.get_legend_handles_labels()
        figure.legend(handles, labels, loc="outside right center", fontsize=7, frameon=False)
        figure.suptitle(f"{dataset} → {eval_dataset} · preset {preset}", fontsize=9)
        stem = figures_dir / slug(f"epsilon_{dataset}-{eval_dataset}_{preset}")
        points = curve_points(results, [method for method, _ in curves])
        drawn = points[(points[DATA] == (dataset, eval_dataset, preset)).all(axis="columns")]
        title = f"Accuracy vs ε (PGD-20) — {dataset} → {eval_dataset} · preset {preset}"
        artifacts.append(Artifact("figure", title, save_figure(figure, stem), drawn))
    return artifacts
