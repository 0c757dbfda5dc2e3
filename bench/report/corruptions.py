"""The common-corruption table: accuracy against severity per method and scheme (issue 13 §2).

From the ``corruption-mean:<severity>`` and ``corruption-mean`` rows (bench.corruption_eval), per
table key (data, preset, protocol, ε): one line per method × scheme, the mean accuracy over the evaluated
corruptions at each severity, then the mean over all (corruption, severity) pairs, each the mean
over seeds. Each line says where its corruptions came from (``official`` CIFAR-10-C / CIFAR-100-C
files, or ``regenerated``; ``approximate`` when corruptions the suite approximates are in the mean).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.atomic import write_atomic
from bench.report.common import MISSING, Artifact, MethodOrder, csv_text, tags
from bench.report.tables import aggregate, group_tables, row_labels

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


def _column(attack: str) -> str | None:
    """'s1'…'s5' for a per-severity mean, 'mean' for the overall mean, None for any other attack."""
    if attack == MEAN:
        return "mean"
    prefix = f"{MEAN}:"
    return f"s{attack[len(prefix) :]}" if attack.startswith(prefix) else None


def corruption_rows(results: pd.DataFrame) -> list[dict]:
    """The long table: one row per (table, method, scheme, column), mean over seeds."""
    out = []
    for key, rows in group_tables(results, "accuracy").items():
        chosen = rows[rows["attack"].map(_column).notna()]
        if chosen.empty:
            continue
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
    for key, table in frame.groupby(["dataset", "eval_dataset", "preset", "protocol", "epsilon"], sort=True):
        columns = sorted({c for c in table["column"] if c != "mean"}) + ["mean"]
        lines += [
            f"## {key[0]} → {key[1]} · preset {key[2]} · protocol {key[3]} · ε = {key[4]}",
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


def write_corruption_report(results: pd.DataFrame, reports_dir: Path, order: MethodOrder) -> Artifact:
    """``corruptions.md`` / ``corruptions.csv``, or a skip note when no corruption was evaluated."""
    title = "Common corruptions (accuracy against severity)"
    rows = corruption_rows(results)
    if not rows:
        return Artifact(
            "table",
            title,
            [],
            "no corruption rows (evaluate.corruptions=regenerated, or --eval-dataset cifar10c / cifar100c)",
        )
    paths = [
        write_atomic(reports_dir / "corruptions.md", corruption_markdown(rows, order)),
        write_atomic(reports_dir / "corruptions.csv", csv_text(rows, CORRUPTION_COLUMNS)),
    ]
    return Artifact("table", title, paths)
