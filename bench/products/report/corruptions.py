"""The common-corruption table: accuracy against severity per method and scheme (issue 13 §2).

From the ``corruption-mean:<severity>`` and ``corruption-mean`` rows (bench.evaluation.corruption_eval), per
table key (data, preset, protocol, ε): one line per method × scheme, its clean and adversarial accuracy
(SA, PGD-20, AA or APGD-CE: the results table's columns, so the two read side by side), the mean accuracy
over the evaluated corruptions at each severity, then the mean over all (corruption, severity) pairs,
each the mean over seeds. Each line says where its corruptions came from (``official`` CIFAR-10-C /
CIFAR-100-C files, or ``regenerated``; ``approximate`` when corruptions the suite approximates are in
the mean). A figure per table key plots accuracy against severity (severity 0: clean), a panel per scheme.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.config import SCHEMES
from bench.products.report.common import MISSING, Artifact, MethodOrder, csv_text, slug, tags
from bench.products.report.figures import method_style, new_figure, outside_legend, save_figure
from bench.products.report.tables import SUPERVISED_AT, TABLE_ATTACKS, aggregate, group_tables, row_labels
from bench.store.atomic import write_atomic

MEAN = "corruption-mean"
SOURCES = ("official", "regenerated", "approximate")
CORRUPTION_COLUMNS = (
    "dataset",
    "eval_dataset",
    "preset",
    "protocol",
    "epsilon",
    "method",
    "scheme",
    "column",
    "mean",
    "n",
    "source",
)


ATTACK_COLUMNS = dict(TABLE_ATTACKS)  # clean → SA, pgd20 → PGD-20, …: the results table's labels


def _column(attack: str) -> str | None:
    """'s1'…'s5' for a per-severity mean, 'mean' for the overall mean, the results table's label (SA,
    PGD-20, AA, APGD-CE) for its attacks, None for any other attack."""
    if attack == MEAN:
        return "mean"
    if attack in ATTACK_COLUMNS:
        return ATTACK_COLUMNS[attack]
    prefix = f"{MEAN}:"
    return f"s{attack[len(prefix) :]}" if attack.startswith(prefix) else None


def corruption_rows(results: pd.DataFrame) -> list[dict]:
    """The long table: one row per (table, method, scheme, column), mean over seeds."""
    out = []
    for key, rows in group_tables(results, "accuracy").items():
        columns = rows["attack"].map(_column)
        corrupted = rows.loc[columns.notna() & rows["attack"].str.startswith(MEAN), ["method", "config_hash", "scheme"]]
        if corrupted.empty:
            continue
        chosen = rows[columns.notna()].merge(corrupted.drop_duplicates())  # the lines that have corruptions
        stats = aggregate(chosen.assign(label=row_labels(chosen)), ["label", "scheme", "attack"])
        for (label, scheme, attack), cell in stats.iterrows():
            source = "+".join(tag for tag in SOURCES if tag in tags(cell["flags"]))
            out.append(
                {
                    "dataset": key.dataset,
                    "eval_dataset": key.eval_dataset,
                    "preset": key.preset,
                    "protocol": key.protocol,
                    "epsilon": "" if key.epsilon is None else key.epsilon,
                    "method": label,
                    "scheme": scheme,
                    "column": _column(attack),
                    "mean": round(float(cell["mean"]), 4),
                    "n": int(cell["n"]),
                    "source": source,
                }
            )
    return out


def corruption_markdown(rows: list[dict], order: MethodOrder) -> str:
    """One Markdown table per (data, preset, protocol, ε): method × scheme lines, severity columns then the mean."""
    frame = pd.DataFrame(rows)
    lines = [
        "# Common corruptions: accuracy (%) against severity",
        "",
        "Mean over the evaluated corruptions at each severity (s1–s5), then over every (corruption, severity); "
        "mean over seeds (n). Source: the official CIFAR-C files, or the seeded regeneration of the recipe "
        "(approximate: ImageMagick corruptions re-implemented). The CSV has each line's values; results.csv "
        "has every (corruption, severity).",
        "",
    ]
    for key, table in frame.groupby(list(FIGURE_KEY), sort=True):
        present = set(table["column"])
        attacks = [label for label in ATTACK_COLUMNS.values() if label in present]
        columns = attacks + sorted(present - {"mean", *attacks}) + ["mean"]
        lines += [
            f"## {_heading(key)}",
            "",
            "| Method | Scheme | " + " | ".join(columns) + " | n | Source |",
            "|---|---|" + "---:|" * len(columns) + "---:|---|",
        ]
        lines_of = table.groupby(["method", "scheme"], sort=False)
        for (method, scheme), group in sorted(lines_of, key=lambda item: (order.key(item[0][0]), item[0][1])):
            values = dict(zip(group["column"], group["mean"]))
            cells = [f"{values[c]:.1f}" if c in values else MISSING for c in columns]
            sources = "+".join(tag for tag in SOURCES if any(tag in str(s) for s in group["source"]))
            lines.append(f"| {method} | {scheme} | " + " | ".join(cells) + f" | {group['n'].max()} | {sources} |")
        lines.append("")
    return "\n".join(lines)


FIGURE_KEY = ("dataset", "eval_dataset", "preset", "protocol", "epsilon")  # one table and one figure each


def _heading(key: tuple) -> str:
    """The heading of one ``FIGURE_KEY`` group, in the table and on its figure."""
    return f"{key[0]} → {key[1]} · preset {key[2]} · protocol {key[3]} · ε = {key[4]}"


NO_ROWS = "no corruption rows (evaluate.corruptions=regenerated, or --eval-dataset cifar10c / cifar100c)"


def write_corruption_report(
    results: pd.DataFrame, reports_dir: Path, order: MethodOrder, figures_dir: Path | None = None
) -> list[Artifact]:
    """``corruptions.md`` / ``corruptions.csv`` and, with ``figures_dir``, a figure per table key; or a
    skip note when no corruption was evaluated."""
    title = "Common corruptions (accuracy against severity)"
    rows = corruption_rows(results)
    if not rows:
        return [Artifact("table", title, [], NO_ROWS)]
    paths = [
        write_atomic(reports_dir / "corruptions.md", corruption_markdown(rows, order)),
        write_atomic(reports_dir / "corruptions.csv", csv_text(rows, CORRUPTION_COLUMNS)),
    ]
    figures = [] if figures_dir is None else plot_corruptions(rows, figures_dir, order)
    return [Artifact("table", title, paths), *figures]


def plot_corruptions(rows: list[dict], figures_dir: Path, order: MethodOrder) -> list[Artifact]:
    """Per table key, accuracy against severity (0 = clean, SA) for each method, a panel per scheme."""
    artifacts = []
    for key, table in pd.DataFrame(rows).groupby(list(FIGURE_KEY), sort=True):
        heading = _heading(key)
        schemes = [scheme for scheme in (*SCHEMES, SUPERVISED_AT) if scheme in set(table["scheme"])]
        figure = new_figure(3.4 * len(schemes) + 1.6, 3.2)
        handles: dict[str, object] = {}
        for axis, scheme in zip(figure.subplots(1, len(schemes), squeeze=False, sharey=True)[0], schemes):
            for method in order.sort(table.loc[table["scheme"] == scheme, "method"]):
                values = table[(table["scheme"] == scheme) & (table["method"] == method)]
                points = dict(zip(values["column"], values["mean"]))
                severities = [s for s in range(6) if (f"s{s}" if s else "SA") in points]
                style = method_style(method, order)
                (handles[method],) = axis.plot(
                    severities, [points[f"s{s}" if s else "SA"] for s in severities], **style, markersize=4
                )
            axis.set(title=scheme, xlabel="severity (0: clean)", ylabel="accuracy (%)", xticks=range(6))
            axis.grid(alpha=0.3)
        outside_legend(figure, list(handles.values()), list(handles))
        figure.suptitle(f"Common corruptions\n{heading}", fontsize=8)
        stem = figures_dir / f"corruptions_{slug('_'.join(str(part) for part in key))}"
        title = f"Accuracy against corruption severity — {heading}"
        artifacts.append(Artifact("figure", title, save_figure(figure, stem)))
    return artifacts
