"""Curves: pretraining loss per step (each run's ``RunDir.history``) and PGD-20 accuracy against ε."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bench.config import SCHEMES
from bench.engine import progress
from bench.products.report.common import Artifact, MethodOrder, in_255ths, round_epsilon, slug, variant_of
from bench.products.report.figures import method_style, new_figure, outside_legend, save_figure
from bench.products.report.tables import DATA, Cell, Table, aggregate, cells_of, protocol_slug, row_labels
from bench.store.results import RunDir

Curves = dict[tuple[str, str], list[tuple[float, Cell]]]  # (method, scheme) -> [(ε, cell)]


def read_history(path: Path) -> pd.DataFrame:
    """The numeric columns of a ``pretrain_history.csv`` (empty cells become NaN; an empty file, no rows)."""
    try:
        history = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a loss history ({type(error).__name__})") from None
    return history.apply(pd.to_numeric, errors="coerce").dropna(axis="columns", how="all")


def loss_histories(rows: pd.DataFrame, runs_dir: Path) -> pd.DataFrame:
    """Per run behind ``rows`` with a loss history: label (``tables.row_labels``), step and the loss
    smoothed by a moving average over 1/25 of the run (the raw per-step loss is too noisy to compare)."""
    runs = rows.assign(label=row_labels(rows)).drop_duplicates("run_id")
    curves = []
    for run in runs.itertuples():
        path = RunDir(runs_dir / run.run_id).history
        try:
            history = read_history(path) if path.is_file() else pd.DataFrame()
        except ValueError as error:  # one damaged history costs its curve, not the report
            progress.log(f"warning: {error}; its run is left out of the loss figure")
            continue
        if "loss" in history and len(history):
            step = history["step"] if "step" in history else pd.Series(np.arange(len(history)))
            curves.append(
                pd.DataFrame(
                    {
                        "label": run.label,
                        "run_id": run.run_id,
                        "step": step,
                        "loss": _moving_average(history["loss"].to_numpy()),
                    }
                )
            )
    return pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=["label", "run_id", "step", "loss"])


def plot_loss_curves(
    rows: pd.DataFrame, data_title: str, runs_dir: Path, figures_dir: Path, order: MethodOrder
) -> Artifact:
    """Pretraining loss: one panel per method family (losses of different families differ in scale),
    one line per method (mean over seeds), shaded between the seeds' min and max.

    One figure per (dataset, eval_dataset, preset): pretraining does not depend on the attack budget.
    """
    title = f"Pretraining loss — {data_title}"
    curves = loss_histories(rows, Path(runs_dir))
    if curves.empty:
        return Artifact("figure", title, [], "no pretrain_history.csv with a loss column for these runs")
    spread = curves.groupby(["label", "step"])["loss"].agg(["mean", "min", "max"])
    labels = order.sort(curves["label"])
    families = list(dict.fromkeys(variant_of(label)[0] for label in labels))
    rows_of_panels = -(-len(families) // 3)
    columns = -(-len(families) // rows_of_panels)  # at most three a row, rows as full as possible
    figure = new_figure(4.4 * columns + 0.4, 2.5 * rows_of_panels + 0.9)
    axes = figure.subplots(rows_of_panels, columns, squeeze=False).ravel()
    for axis, family in zip(axes, families):
        for label in (label for label in labels if variant_of(label)[0] == family):
            line, style = spread.loc[label], method_style(label, order)
            axis.plot(line.index, line["mean"], color=style["color"], linestyle=style["linestyle"], label=label)
            axis.fill_between(line.index, line["min"], line["max"], color=style["color"], alpha=0.25, linewidth=0)
        axis.set_title(family, fontsize=9)
        axis.set(xlabel="step", ylabel="pretraining loss")
        axis.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the data
    for axis in axes[len(families) :]:
        axis.set_visible(False)
    seeds = curves.groupby("label")["run_id"].nunique().max()
    band = f"mean over seeds, shaded min–max of {seeds}" if seeds > 1 else "one run per method"
    figure.suptitle(f"{data_title}\n({band}; moving average over 1/25 of the run)", fontsize=8)
    paths = save_figure(figure, figures_dir / slug(f"loss_{data_title.replace(' · preset ', '_')}"))
    return Artifact("figure", title, paths)


def loss_curve_artifacts(
    tables: Sequence[Table], runs_dir: Path, figures_dir: Path, order: MethodOrder
) -> list[Artifact]:
    """Loss curves for the runs of every table, merged over tables that differ only in ε."""
    merged: dict[tuple[str, str, str], list[pd.DataFrame]] = {}
    for table in tables:
        merged.setdefault((table.key.dataset, table.key.eval_dataset, table.key.preset), []).append(table.rows)
    return [
        plot_loss_curves(
            pd.concat(frames), f"{dataset} → {eval_dataset} · preset {preset}", runs_dir, figures_dir, order
        )
        for (dataset, eval_dataset, preset), frames in merged.items()
    ]


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
        (results["metric"] == "accuracy") & results["run_id"].isin(curve_runs)
    )
    chosen = on_curve & (results["attack"] == "pgd20") & results["epsilon"].notna()
    if methods:
        chosen &= results["method"].isin(list(methods))
    points = results[chosen]
    return points.assign(point=points["epsilon"].map(round_epsilon))  # (from the selection: an empty frame
    # would take the index of a longer series assigned to it)


def epsilon_series(
    results: pd.DataFrame, methods: Sequence[str] | None = None
) -> dict[tuple[str, str, str, str], Curves]:
    """PGD-20 accuracy of the same classifiers at several ε per (data, preset, protocol) and (method, scheme),
    mean ± std over seeds at each ε; a curve is kept only with ≥ 2 distinct ε."""
    stats = aggregate(curve_points(results, methods), [*DATA, "method", "scheme", "point"])
    series: dict[tuple[str, str, str], Curves] = {}
    for (*data, method, scheme, epsilon), cell in sorted(cells_of(stats).items()):
        series.setdefault(tuple(data), {}).setdefault((method, scheme), []).append((epsilon, cell))
    return {
        data: kept
        for data, curves in series.items()
        if (kept := {key: curve for key, curve in curves.items() if len(curve) >= 2})
    }


def epsilon_ticks(axis, epsilons: Sequence[float]) -> None:
    """Ticks at k/255 as papers print budgets, when every ε on the axis lies on the 1/255 grid."""
    steps = [in_255ths(epsilon) for epsilon in epsilons]
    if epsilons and None not in steps:
        axis.set_xticks(list(epsilons), [f"{k}/255" for k in steps], fontsize=8)


def plot_epsilon_curves(
    results: pd.DataFrame, figures_dir: Path, order: MethodOrder, methods: Sequence[str] | None = None
) -> list[Artifact]:
    """Accuracy under PGD-20 against ε, one panel per scheme, for methods measured at ≥ 2 budgets."""
    series = epsilon_series(results, methods)
    if not series:
        return [Artifact("figure", "Accuracy vs ε (PGD-20)", [], "no method has PGD-20 rows at ≥ 2 ε values")]
    artifacts = []
    for (dataset, eval_dataset, preset, protocol), curves in sorted(series.items()):
        schemes = [scheme for scheme in SCHEMES if any(key[1] == scheme for key in curves)]
        figure = new_figure(3.8 * len(schemes) + 1.6, 3.4)
        for axis, scheme in zip(figure.subplots(1, len(schemes), squeeze=False)[0], schemes):
            for (method, curve_scheme), points in sorted(curves.items(), key=lambda item: order.key(item[0][0])):
                if curve_scheme == scheme:
                    errors = [np.nan if cell.std is None else cell.std for _, cell in points]
                    axis.errorbar(
                        [eps for eps, _ in points],
                        [cell.mean for _, cell in points],
                        capsize=2,
                        yerr=None if all(np.isnan(errors)) else errors,
                        label=method,
                        markersize=4,
                        **method_style(method, order),
                    )
            axis.set(title=scheme, xlabel="ε (L∞)", ylabel="PGD-20 accuracy (%)")
            epsilon_ticks(axis, sorted({eps for points in curves.values() for eps, _ in points}))
            axis.grid(alpha=0.3)
        handles, labels = axis.get_legend_handles_labels()
        outside_legend(figure, handles, labels)
        seeds = max(cell.n for points in curves.values() for _, cell in points)
        note = f"mean ± sample std over {seeds} seeds" if seeds > 1 else "one run per method"
        figure.suptitle(f"{dataset} → {eval_dataset} · preset {preset} · protocol {protocol} ({note})", fontsize=9)
        stem = figures_dir / slug(f"epsilon_{dataset}-{eval_dataset}_{preset}{protocol_slug(protocol)}")
        title = f"Accuracy vs ε (PGD-20) — {dataset} → {eval_dataset} · preset {preset} · protocol {protocol}"
        artifacts.append(Artifact("figure", title, save_figure(figure, stem)))
    return artifacts
