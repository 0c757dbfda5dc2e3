"""Tables and plots from the results store only (DESIGN §5): a report never trains.

``results/results.csv`` holds one row per measured number. This module groups the rows by
(dataset, eval_dataset, preset, epsilon) and writes, under the reports directory:

- ``results.{md,csv,tex}``: per group, methods × {SLF, ALF, AFF} × {SA, PGD-20, AA}, last-epoch
  accuracy (THE result), mean ± sample std over seeds, best per column in bold, "–" where
  nothing was measured (never filled), ``†`` on cells whose run flagged itself ``suspect``;
- ``results_best_epoch.{md,csv,tex}``: the same layout for the best-on-test epoch that the
  released scripts print, kept apart because it is chosen on the test set;
- ``figures/``: robust-vs-clean scatter, grouped bars, pretraining loss curves and accuracy
  vs ε (PNG + PDF, Agg backend through ``matplotlib.figure.Figure``, no pyplot state);
- ``paper_table1.{md,csv,tex}``: the A-InfoNCE paper's Table 1 layout (CIFAR-10/100), ours
  next to published reference numbers (``results/reference/*.csv``) and Δ = ours − reference;
- ``index.md``: every file written, with the preset, config hashes and code versions behind it.

Every file is written to a temp file in its directory and renamed over the target.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.atomic import write_atomic

SCHEMES = ("SLF", "ALF", "AFF")
SUPERVISED_AT = "AT"  # RobustBench zoo models (`bench evaluate --robustbench-model`): no finetuning
TABLE_ATTACKS = (("clean", "SA"), ("pgd20", "PGD-20"), ("autoattack", "AA"))
PAPER_ATTACKS = (("clean", "SA"), ("pgd20", "RA"), ("autoattack", "AA"))
PAPER_DATASETS = (("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100"))
PAPER_ROWS = (
    ("rocl", "RoCL"), ("rocl-ip", "RoCL-IP"), ("rocl-hn", "RoCL-HN"), ("rocl-iphn", "RoCL-IPHN"),
    ("advcl", "AdvCL"), ("advcl-ip", "AdvCL-IP"), ("advcl-hn", "AdvCL-HN"), ("advcl-iphn", "AdvCL-IPHN"),
)
ACL_ROWS = (("acl", "ACL"), ("acl-ip", "ACL-IP"), ("acl-hn", "ACL-HN"), ("acl-iphn", "ACL-IPHN"))
UNSPECIFIED_AINFONCE = "a-infonce (unspecified variant)"
PAPER_EPSILON = 8 / 255
MISSING = "–"
SUSPECT_MARK = "†"
BEST_EPOCH_METRIC = "accuracy_best_epoch"
REQUIRED_COLUMNS = ("run_id", "preset", "method", "dataset", "eval_dataset", "scheme", "attack", "metric", "value")
FLOAT_COLUMNS = ("value", "epsilon", "wall_s")
INT_COLUMNS = ("n_eval", "seed", "pretrain_epochs", "finetune_epochs")
METHOD_ORDER = ("simclr", *(m for m, _ in ACL_ROWS), *(m for m, _ in PAPER_ROWS))
REFERENCE_PRIORITY = ("ainfonce_table1.csv", "author_quoted.csv", "robustssl_leaderboard.csv")
DEFAULT_REFERENCE_DIR = Path(__file__).resolve().parent.parent / "results" / "reference"


# --------------------------------------------------------------------------- loading


def load_results(path: str | Path) -> list[dict[str, Any]]:
    """Read ``results.csv`` into dicts with typed values (floats, ints, ``None`` for empty, flags as a tuple)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no results at {path}: run `bench run` first")
    with open(path, newline="") as stream:
        reader = csv.DictReader(stream)
        missing = [column for column in REQUIRED_COLUMNS if column not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path} lacks columns {missing}: not a results table")
        return [_typed_row(raw, f"{path}:{line}") for line, raw in enumerate(reader, start=2)]


def _typed_row(raw: dict[str, str | None], where: str) -> dict[str, Any]:
    row: dict[str, Any] = {key: (value or "").strip() for key, value in raw.items() if key is not None}
    try:
        for column in FLOAT_COLUMNS:
            row[column] = _number(raw.get(column), float)
        for column in INT_COLUMNS:
            row[column] = _number(raw.get(column), int)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    if row["value"] is None:
        raise ValueError(f"{where}: empty value")
    row["flags"] = tuple(tag.strip() for tag in (raw.get("flags") or "").split(";") if tag.strip())
    row["protocol"] = row.get("protocol") or "unified"  # stores older than the column were all 'unified'
    return row


def _number(text: str | None, kind: type) -> float | int | None:
    text = (text or "").strip()
    if not text:
        return None
    return int(float(text)) if kind is int else float(text)


# --------------------------------------------------------------------------- grouping and aggregation


@dataclass(frozen=True)
class TableKey:
    """One results table: rows measured on the same data, preset, finetuning protocol and attack budget."""

    dataset: str
    eval_dataset: str
    preset: str
    epsilon: float | None
    protocol: str = "unified"

    def title(self) -> str:
        return (f"{self.dataset} → {self.eval_dataset} · preset {self.preset} · protocol {self.protocol} · "
                f"ε = {format_epsilon(self.epsilon)} (L∞)")

    def slug(self) -> str:
        protocol = "" if self.protocol == "unified" else f"_{self.protocol}"
        return _slug(f"{self.dataset}-{self.eval_dataset}_{self.preset}{protocol}_eps{_epsilon_slug(self.epsilon)}")


@dataclass
class Cell:
    """The aggregate of one table cell: mean and sample std over seeds, and any suspect flags."""

    mean: float
    std: float | None
    n: int
    suspect: tuple[str, ...]
    rows: list[dict[str, Any]]


@dataclass
class Table:
    """Methods × (scheme, attack) cells for one :class:`TableKey`; ``rows`` are all rows behind it."""

    key: TableKey
    methods: list[str]
    cells: dict[tuple[str, str, str], Cell]
    rows: list[dict[str, Any]]

    @property
    def schemes(self) -> tuple[str, ...]:
        """SLF, ALF, AFF, plus AT when the table holds supervised adversarial-training models."""
        return SCHEMES + ((SUPERVISED_AT,) if any(s == SUPERVISED_AT for _, s, _ in self.cells) else ())

    def best(self, scheme: str, attack: str) -> float | None:
        values = [cell.mean for (_, s, a), cell in self.cells.items() if (s, a) == (scheme, attack)]
        return max(values) if values else None


def _in_255ths(epsilon: float) -> int | None:
    """k when ε = k/255 (the papers' budgets), else None."""
    steps = epsilon * 255
    return round(steps) if steps >= 0.5 and abs(steps - round(steps)) < 1e-3 else None


def format_epsilon(epsilon: float | None) -> str:
    """``8/255 (0.03137)`` for budgets on the 1/255 grid, else the plain number (e.g. ``0.1``)."""
    if epsilon is None:
        return "unspecified"
    steps = _in_255ths(epsilon)
    return f"{epsilon:g}" if steps is None else f"{steps}/255 ({epsilon:.4g})"


def _epsilon_slug(epsilon: float | None) -> str:
    if epsilon is None:
        return "na"
    steps = _in_255ths(epsilon)
    return f"{epsilon:g}".replace(".", "p") if steps is None else f"{steps}of255"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_+-]+", "-", text)


def preset_banner(preset: str | None) -> str | None:
    """The warning every non-paper table carries (DESIGN §5: a smoke table is a demonstration)."""
    if preset in (None, "paper"):
        return None
    return f"{preset} preset: a working demonstration, not a result to compare with papers"


def group_tables(results: Iterable[dict[str, Any]], metric: str = "accuracy") -> dict[TableKey, list[dict[str, Any]]]:
    """Rows of ``metric`` grouped by table; clean rows without ε join every table of their data and preset."""
    rows = [row for row in results if row["metric"] == metric]
    floating = [row for row in rows if row["epsilon"] is None and row["attack"] == "clean"]
    floating_ids = {id(row) for row in floating}
    groups: dict[TableKey, list[dict[str, Any]]] = {}
    for row in rows:
        if id(row) not in floating_ids:
            epsilon = None if row["epsilon"] is None else round(row["epsilon"], 6)
            protocol = row.get("protocol") or "unified"
            key = TableKey(row["dataset"], row["eval_dataset"], row["preset"], epsilon, protocol)
            groups.setdefault(key, []).append(row)
    for row in floating:
        same = (row["dataset"], row["eval_dataset"], row["preset"], row.get("protocol") or "unified")
        targets = [key for key in groups if (key.dataset, key.eval_dataset, key.preset, key.protocol) == same]
        for key in targets or [TableKey(*same[:3], None, same[3])]:
            groups.setdefault(key, []).append(row)
    order = lambda key: (key.dataset, key.eval_dataset, key.preset, key.protocol,
                         -1.0 if key.epsilon is None else key.epsilon)
    return {key: groups[key] for key in sorted(groups, key=order)}


def aggregate(rows: Sequence[dict[str, Any]]) -> Cell:
    """Mean and sample std (ddof 1) over seeds; a rerun of the same seed supersedes the older row."""
    latest: dict[Any, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda row: row.get("timestamp") or ""):
        latest[("seed", row["seed"]) if row["seed"] is not None else ("run", row["run_id"])] = row
    values = np.array([row["value"] for row in latest.values()], dtype=float)
    std = float(values.std(ddof=1)) if len(values) > 1 else None
    suspect = sorted({tag for row in latest.values() for tag in row["flags"] if tag.startswith("suspect")})
    return Cell(float(values.mean()), std, len(values), tuple(suspect), list(latest.values()))


def order_methods(methods: Iterable[str]) -> list[str]:
    """Registry order (simclr, acl…, rocl…, advcl…), then any other method alphabetically.

    A row label ``method [config]`` sorts with its method."""
    rank = {name: index for index, name in enumerate(METHOD_ORDER)}
    return sorted(set(methods), key=lambda name: (rank.get(label_method(name), len(rank)), name))


def label_method(label: str) -> str:
    """The method of a table row label (``acl [3f2a…]`` → ``acl``; see ``row_labels``)."""
    return label.split(" [", 1)[0]


def row_labels(rows: Sequence[dict[str, Any]]) -> dict[int, str]:
    """Table row label of each result row: its method, or ``method [config_hash]`` when the
    method was run with several configurations (seeds of one configuration share a hash), so
    different settings are never averaged together or silently dropped."""
    hashes: dict[str, set[str]] = {}
    for row in rows:
        hashes.setdefault(row["method"], set()).add(row.get("config_hash") or "")
    return {id(row): row["method"] if len(hashes[row["method"]]) == 1 else f"{row['method']} [{row.get('config_hash')}]"
            for row in rows}


def latest_configuration(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method, only the rows of its most recently run configuration (for one-row-per-method layouts)."""
    newest: dict[str, tuple[str, str]] = {}
    for row in rows:
        stamp = (row.get("timestamp") or "", row.get("config_hash") or "")
        newest[row["method"]] = max(newest.get(row["method"], stamp), stamp)
    return [row for row in rows if (row.get("config_hash") or "") == newest[row["method"]][1]]


def build_table(key: TableKey, rows: Sequence[dict[str, Any]], attacks: Sequence[str] | None = None) -> Table:
    """Aggregate ``rows`` into cells for the given attacks (default: clean, PGD-20, AutoAttack)."""
    attacks = tuple(attacks or (attack for attack, _ in TABLE_ATTACKS))
    labels = row_labels(rows)
    buckets: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if row["scheme"] in (*SCHEMES, SUPERVISED_AT) and row["attack"] in attacks:
            buckets.setdefault((labels[id(row)], row["scheme"], row["attack"]), []).append(row)
    cells = {cell_key: aggregate(cell_rows) for cell_key, cell_rows in buckets.items()}
    return Table(key, order_methods(method for method, _, _ in cells), cells, list(rows))


def build_tables(results: Sequence[dict[str, Any]], metric: str = "accuracy") -> list[Table]:
    return [build_table(key, rows) for key, rows in group_tables(results, metric).items()]


# --------------------------------------------------------------------------- table text


def _is_best(table: Table, cell: Cell, scheme: str, attack: str) -> bool:
    best = table.best(scheme, attack)
    return best is not None and round(cell.mean, 2) == round(best, 2)


def cell_text(cell: Cell | None, best: bool, style: str = "md") -> str:
    """``mean ± std`` (or the single value), bold when best, ``†`` when suspect; ``–`` when missing."""
    if cell is None:
        return "--" if style == "tex" else MISSING
    plus_minus = " $\\pm$ " if style == "tex" else " ± "
    text = f"{cell.mean:.2f}" + (f"{plus_minus}{cell.std:.2f}" if cell.std is not None else "")
    if best:
        text = f"\\textbf{{{text}}}" if style == "tex" else f"**{text}**"
    if cell.suspect:
        text += "$^\\dagger$" if style == "tex" else SUSPECT_MARK
    return text


def _row_cells(table: Table, method: str, style: str) -> list[str]:
    cells = []
    for scheme in table.schemes:
        for attack, _ in TABLE_ATTACKS:
            cell = table.cells.get((method, scheme, attack))
            cells.append(cell_text(cell, cell is not None and _is_best(table, cell, scheme, attack), style))
    return cells


def table_notes(table: Table) -> list[str]:
    """Footnotes: how cells were aggregated, and every suspect cell with its flags."""
    seeds = {method: max(cell.n for (m, _, _), cell in table.cells.items() if m == method) for method in table.methods}
    notes = ["Bold: best in its column. " + MISSING + ": not measured (never filled in)."]
    several = [f"{method} n={n}" for method, n in seeds.items() if n > 1]
    if several:
        notes.append("mean ± sample std over seeds (" + ", ".join(several) + "); other cells are single runs.")
    notes += _flag_notes(table)
    if any(label_method(method) != method for method in table.methods):
        notes.append("method [hash]: the method was run with several configurations; one row each "
                     "(config.json of its runs in results/runs/ has the settings).")
    n_eval = sorted({row["n_eval"] for row in table.rows if row["n_eval"] is not None})
    if n_eval:
        notes.append("evaluated on n_eval = " + ", ".join(map(str, n_eval)) + " test images.")
    return notes


def _flag_notes(table: Table) -> list[str]:
    """One line per (method, scheme, tags): suspect cells get the marker, other flags are listed plainly."""
    grouped: dict[tuple[str, str, bool, str], list[str]] = {}
    for method in table.methods:
        for scheme in table.schemes:
            for attack, label in TABLE_ATTACKS:
                cell = table.cells.get((method, scheme, attack))
                tags = sorted({tag for row in cell.rows for tag in row["flags"]}) if cell else []
                for suspect in (True, False):
                    chosen = [tag for tag in tags if tag.startswith("suspect") == suspect]
                    if chosen:
                        grouped.setdefault((method, scheme, suspect, "; ".join(chosen)), []).append(label)
    return [f"{SUSPECT_MARK + ' ' if suspect else 'flags: '}{method} {scheme} {', '.join(labels)}: {tags}"
            for (method, scheme, suspect, tags), labels in grouped.items()]


def table_markdown(table: Table, heading: str = "") -> str:
    """One table as Markdown: title with ε, banner for non-paper presets, cells, footnotes."""
    header = ["Method", *(f"{scheme} {label}" for scheme in table.schemes for _, label in TABLE_ATTACKS)]
    lines = [f"### {heading}{table.key.title()}", ""]
    banner = preset_banner(table.key.preset)
    if banner:
        lines += [f"> **{banner}**", ""]
    lines += ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for method in table.methods:
        lines.append("| " + " | ".join([method.replace("|", "\\|"), *_row_cells(table, method, "md")]) + " |")
    lines += [""] + [f"- {note}" for note in table_notes(table)] + [""]
    return "\n".join(lines)


def latex_escape(text: str) -> str:
    """Escape LaTeX specials in plain text (method and dataset names, notes)."""
    replacements = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                    "–": "--", "±": r"$\pm$", "→": r"$\to$", "ε": r"$\epsilon$", "∞": r"$\infty$",
                    "·": r"$\cdot$", "†": r"$^\dagger$", "Δ": r"$\Delta$", "−": "-", "≥": r"$\geq$"}
    return "".join(replacements.get(char, char) for char in text)


def table_latex(table: Table, heading: str = "") -> str:
    """One booktabs table; the caption carries data, preset, ε and the non-paper banner."""
    banner = preset_banner(table.key.preset)
    caption = latex_escape(heading + table.key.title() + (f". {banner}." if banner else ""))
    lines = ["\\begin{table}[t]", "\\centering", "\\small", f"\\caption{{{caption}}}",
             "\\begin{tabular}{l" + "ccc" * len(table.schemes) + "}", "\\toprule",
             " & " + " & ".join(f"\\multicolumn{{3}}{{c}}{{{scheme}}}" for scheme in table.schemes) + " \\\\",
             " ".join(f"\\cmidrule(lr){{{2 + 3 * i}-{4 + 3 * i}}}" for i in range(len(table.schemes))),
             "Method & " + " & ".join(label for _ in table.schemes for _, label in TABLE_ATTACKS) + " \\\\", "\\midrule"]
    for method in table.methods:
        lines.append(" & ".join([latex_escape(method), *_row_cells(table, method, "tex")]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "", "\\smallskip", "{\\footnotesize"]
    lines += [" \\\\\n".join(latex_escape(note) for note in table_notes(table))]
    lines += ["}", "\\end{table}", ""]
    return "\n".join(lines)


TABLE_CSV_COLUMNS = ("dataset", "eval_dataset", "preset", "epsilon", "method", "scheme", "attack", "column",
                     "mean", "std", "n", "best", "flags")


def table_csv_rows(table: Table) -> list[dict[str, Any]]:
    """The table in long form, one row per method × scheme × attack; a missing cell has an empty mean."""
    out = []
    for method in table.methods:
        for scheme in table.schemes:
            for attack, label in TABLE_ATTACKS:
                cell = table.cells.get((method, scheme, attack))
                out.append({"dataset": table.key.dataset, "eval_dataset": table.key.eval_dataset,
                            "preset": table.key.preset,
                            "epsilon": "" if table.key.epsilon is None else table.key.epsilon,
                            "method": method, "scheme": scheme, "attack": attack, "column": f"{scheme} {label}",
                            "mean": "" if cell is None else round(cell.mean, 4),
                            "std": "" if cell is None or cell.std is None else round(cell.std, 4),
                            "n": 0 if cell is None else cell.n,
                            "best": "" if cell is None else int(_is_best(table, cell, scheme, attack)),
                            "flags": "" if cell is None else ";".join(cell.suspect)})
    return out


# --------------------------------------------------------------------------- writing


@dataclass
class Artifact:
    """Something the index lists: the files written (or why not) and the result rows behind them."""

    kind: str
    title: str
    paths: list[Path]
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: str | None = None


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_tables(tables: Sequence[Table], out_dir: Path, stem: str, heading: str, preamble: str) -> list[Path]:
    """All tables of one metric into ``stem.md``, ``stem.csv`` and ``stem.tex``."""
    markdown = [f"# {preamble}", ""] + [table_markdown(table, heading) for table in tables]
    if not tables:
        markdown.append("No rows for this metric.")
    latex = ["% requires \\usepackage{booktabs}", *(table_latex(table, heading) for table in tables)]
    rows = [row for table in tables for row in table_csv_rows(table)]
    return [write_atomic(out_dir / f"{stem}.md", "\n".join(markdown) + "\n"),
            write_atomic(out_dir / f"{stem}.csv", csv_text(rows, TABLE_CSV_COLUMNS)),
            write_atomic(out_dir / f"{stem}.tex", "\n".join(latex))]


def _new_figure(width: float, height: float):
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


# --------------------------------------------------------------------------- plots


def plot_robust_vs_clean(table: Table, figures_dir: Path) -> Artifact:
    """Per scheme, each method's robust (PGD-20 ●, AA ▲) against clean accuracy: the trade-off at a glance."""
    title = f"Robust vs clean accuracy — {table.key.title()}"
    points = {scheme: _tradeoff_points(table, scheme) for scheme in table.schemes}
    schemes = [scheme for scheme in table.schemes if points[scheme]]
    if not schemes:
        return Artifact("figure", title, [], table.rows, "no method has both clean and robust accuracy")
    figure = _new_figure(3.8 * len(schemes), 3.4)
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


def _figure_stem(figures_dir: Path, name: str, table: Table) -> Path:
    return figures_dir / f"{name}_{table.key.slug()}"


def plot_bars(table: Table, figures_dir: Path) -> Artifact:
    """One panel per measured attack: bars per method, grouped by scheme, with std error bars."""
    title = f"Accuracy per method and scheme — {table.key.title()}"
    attacks = [(a, label) for a, label in TABLE_ATTACKS if any(key[2] == a for key in table.cells)]
    if not attacks:
        return Artifact("figure", title, [], table.rows, "no clean, PGD-20 or AA accuracy")
    figure = _new_figure(max(6.5, 1.0 * len(table.methods) + 3), 2.4 * len(attacks) + 0.4)
    positions, width = np.arange(len(table.methods)), 0.8 / len(table.schemes)
    rotation = {"rotation": 30, "ha": "right"} if len(table.methods) > 4 else {}
    for row, (attack, label) in enumerate(attacks):
        axis = figure.add_subplot(len(attacks), 1, row + 1)
        for index, scheme in enumerate(table.schemes):
            cells = [table.cells.get((method, scheme, attack)) for method in table.methods]
            heights = [cell.mean if cell else math.nan for cell in cells]
            errors = [(cell.std or 0.0) if cell else 0.0 for cell in cells]
            axis.bar(positions + (index - (len(table.schemes) - 1) / 2) * width, heights, width, yerr=errors, capsize=2, label=scheme)
        axis.set_xticks(positions, table.methods, fontsize=8, **rotation)
        axis.set_xlim(-0.6, len(table.methods) - 0.4)
        axis.set_ylabel(f"{label} (%)")
        if row == 0:
            axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    figure.suptitle(table.key.title() + "\n(missing bars: not measured)", fontsize=8)
    return Artifact("figure", title, save_figure(figure, _figure_stem(figures_dir, "bars", table)), table.rows)


def read_history(path: Path) -> dict[str, np.ndarray]:
    """The numeric columns of a ``pretrain_history.csv`` (empty cells become NaN)."""
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    columns: dict[str, np.ndarray] = {}
    for name in (rows[0].keys() if rows else ()):
        try:
            columns[name] = np.array([float(row[name]) if row[name] not in ("", None) else math.nan for row in rows])
        except ValueError:
            continue
    return columns


def _history_runs(rows: Sequence[dict[str, Any]], runs_dir: Path) -> list[tuple[str, dict[str, Any], Path]]:
    first: dict[str, dict[str, Any]] = {}
    for row in rows:
        first.setdefault(row["run_id"], row)
    rank = {method: index for index, method in enumerate(order_methods(row["method"] for row in rows))}
    found = [(run_id, row, runs_dir / run_id / "pretrain_history.csv") for run_id, row in first.items()]
    found = [item for item in found if item[2].is_file()]
    return sorted(found, key=lambda item: (rank[item[1]["method"]], str(item[1]["seed"]), item[0]))


def plot_loss_curves(rows: Sequence[dict[str, Any]], data_title: str, runs_dir: Path, figures_dir: Path) -> Artifact:
    """Pretraining loss per step of the runs behind ``rows`` (raw, faint; moving average, solid).

    One figure per (dataset, eval_dataset, preset): pretraining does not depend on the attack budget.
    """
    title = f"Pretraining loss — {data_title}"
    runs = _history_runs(rows, Path(runs_dir))
    curves = [(row, history) for _, row, path in runs if "loss" in (history := read_history(path))]
    if not curves:
        return Artifact("figure", title, [], list(rows), "no pretrain_history.csv with a loss column for these runs")
    figure = _new_figure(6.0, 3.6)
    axis = figure.subplots()
    for row, history in curves:
        x = history.get("step", np.arange(len(history["loss"])))
        label = row["method"] + ("" if row["seed"] is None else f" (seed {row['seed']})")
        line, = axis.plot(x, _moving_average(history["loss"]), label=label)
        axis.plot(x, history["loss"], color=line.get_color(), alpha=0.25, linewidth=0.8)
    axis.set(xlabel="step", ylabel="pretraining loss", title=data_title)
    axis.title.set_fontsize(9)
    axis.legend(fontsize=7)
    paths = save_figure(figure, figures_dir / _slug(f"loss_{data_title.replace(' · preset ', '_')}"))
    used = {run_id for run_id, _, _ in runs}
    return Artifact("figure", title, paths, [row for row in rows if row["run_id"] in used])


def loss_curve_artifacts(tables: Sequence[Table], runs_dir: Path, figures_dir: Path) -> list[Artifact]:
    """Loss curves for the runs of every table, merged over tables that differ only in ε."""
    merged: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for table in tables:
        merged.setdefault((table.key.dataset, table.key.eval_dataset, table.key.preset), []).extend(table.rows)
    return [plot_loss_curves(rows, f"{dataset} → {eval_dataset} · preset {preset}", runs_dir, figures_dir)
            for (dataset, eval_dataset, preset), rows in merged.items()]


def _moving_average(values: np.ndarray) -> np.ndarray:
    window = max(1, len(values) // 25)
    if window == 1:
        return values
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


Curves = dict[tuple[str, str], list[tuple[float, Cell]]]  # (method, scheme) -> [(ε, cell)]


def epsilon_series(results: Sequence[dict[str, Any]], methods: Sequence[str] | None = None
                   ) -> dict[tuple[str, str, str], Curves]:
    """PGD-20 accuracy of the same classifiers at several ε (``accuracy_vs_epsilon`` rows plus the
    run's main PGD-20 row, which is the curve's point at the main ε) per
    (data, preset) and (method, scheme); kept only with ≥ 2 distinct ε. ``methods`` selects."""
    curve_runs = {row["run_id"] for row in results if row["metric"] == "accuracy_vs_epsilon"}
    buckets: dict[tuple, dict[tuple, dict[float, list]]] = {}
    for row in results:
        if methods and row["method"] not in methods:
            continue
        on_curve = row["metric"] == "accuracy_vs_epsilon" or (row["metric"] == "accuracy" and row["run_id"] in curve_runs)
        if on_curve and row["attack"] == "pgd20" and row["epsilon"] is not None:
            data = (row["dataset"], row["eval_dataset"], row["preset"])
            curve = buckets.setdefault(data, {}).setdefault((row["method"], row["scheme"]), {})
            curve.setdefault(round(row["epsilon"], 6), []).append(row)
    series = {}
    for data, curves in buckets.items():
        kept = {key: [(eps, aggregate(rows)) for eps, rows in sorted(points.items())]
                for key, points in curves.items() if len(points) >= 2}
        if kept:
            series[data] = kept
    return series


VARIANT_LINES = {"ip": "--", "hn": ":", "iphn": "-."}
FAMILY_MARKERS = "osD^vP*Xh"


def method_style(method: str) -> dict[str, Any]:
    """One colour and marker per method family (simclr, acl, rocl, advcl, others), one line style per
    A-InfoNCE variant: 13 methods stay tellable apart where a 10-colour cycle would repeat."""
    base, _, variant = label_method(method).rpartition("-")
    if variant not in VARIANT_LINES:
        base, variant = label_method(method), ""
    families = [name for name in METHOD_ORDER if "-" not in name]
    index = families.index(base) if base in families else len(families) + sum(map(ord, base)) % 5
    return {"color": f"C{index % 10}", "marker": FAMILY_MARKERS[index % len(FAMILY_MARKERS)],
            "linestyle": VARIANT_LINES.get(variant, "-")}


def plot_epsilon_curves(results: Sequence[dict[str, Any]], figures_dir: Path,
                        methods: Sequence[str] | None = None) -> list[Artifact]:
    """Accuracy under PGD-20 against ε, one panel per scheme, for methods measured at ≥ 2 budgets."""
    series = epsilon_series(results, methods)
    if not series:
        return [Artifact("figure", "Accuracy vs ε (PGD-20)", [], [], "no method has PGD-20 rows at ≥ 2 ε values")]
    artifacts = []
    for (dataset, eval_dataset, preset), curves in sorted(series.items()):
        schemes = [scheme for scheme in SCHEMES if any(key[1] == scheme for key in curves)]
        figure = _new_figure(3.8 * len(schemes) + 1.6, 3.4)
        for axis, scheme in zip(figure.subplots(1, len(schemes), squeeze=False)[0], schemes):
            rank = {method: index for index, method in enumerate(order_methods(method for method, _ in curves))}
            for (method, curve_scheme), points in sorted(curves.items(), key=lambda item: rank[item[0][0]]):
                if curve_scheme == scheme:
                    axis.errorbar([p[0] for p in points], [p[1].mean for p in points],
                                  yerr=[p[1].std or 0.0 for p in points], capsize=2, label=method,
                                  markersize=4, **method_style(method))
            axis.set(title=scheme, xlabel="ε (L∞)", ylabel="PGD-20 accuracy (%)")
        handles, labels = axis.get_legend_handles_labels()
        figure.legend(handles, labels, loc="outside right center", fontsize=7, frameon=False)
        figure.suptitle(f"{dataset} → {eval_dataset} · preset {preset}", fontsize=9)
        stem = figures_dir / _slug(f"epsilon_{dataset}-{eval_dataset}_{preset}")
        rows = [cell_row for points in curves.values() for _, cell in points for cell_row in cell.rows]
        title = f"Accuracy vs ε (PGD-20) — {dataset} → {eval_dataset} · preset {preset}"
        artifacts.append(Artifact("figure", title, save_figure(figure, stem), rows))
    return artifacts


# --------------------------------------------------------------------------- reference numbers


def resolve_reference_dir(reference_dir: str | Path | None) -> Path | None:
    """The given directory if it holds reference CSVs, else the repository's ``results/reference``."""
    for candidate in (reference_dir, DEFAULT_REFERENCE_DIR):
        if candidate is not None and any(Path(candidate).glob("*.csv")):
            return Path(candidate)
    return None


def load_reference(reference_dir: str | Path | None) -> list[dict[str, Any]]:
    """Published numbers from ``*.csv`` (method, dataset, eval_dataset, scheme, attack, metric, value, source, note).

    Files are read in priority order (the A-InfoNCE paper's own table if ever added, author-quoted
    numbers, then the RobustSSL leaderboard), so the first match for a cell is the preferred one.
    """
    directory = resolve_reference_dir(reference_dir)
    if directory is None:
        return []
    rank = {name: index for index, name in enumerate(REFERENCE_PRIORITY)}
    rows = []
    for path in sorted(directory.glob("*.csv"), key=lambda path: (rank.get(path.name, len(rank)), path.name)):
        with open(path, newline="") as stream:
            for line, raw in enumerate(csv.DictReader(stream), start=2):
                try:
                    rows.append({**raw, "value": float(raw["value"]), "file": path.name})
                except (KeyError, TypeError, ValueError) as error:
                    raise ValueError(f"{path}:{line}: bad reference row ({error})") from None
    return rows


LEADERBOARD_PAPERS = {  # paper title prefix -> (method, method when the row uses post-processing, note)
    "Robust Pre-Training by Adversarial Contrastive Learning": ("acl", None, "ACL (Jiang et al., NeurIPS 2020)"),
    "Adversarial Self-Supervised Contrastive Learning": ("rocl", None, "RoCL (Kim et al., NeurIPS 2020)"),
    "When Does Contrastive Learning Preserve": ("advcl", None, "AdvCL (Fan et al., NeurIPS 2021)"),
    "Adversarial Contrastive Learning via Asymmetric InfoNCE": (
        UNSPECIFIED_AINFONCE, None, ("A-InfoNCE (Yu et al., ECCV 2022); the leaderboard does not say which variant "
                                     "(IP/HN/IPHN, AdvCL or RoCL base), so it is not assigned to one")),
    "Rethinking the Effect of Data Augmentation": ("dynacl", "dynacl++", "DynACL (Luo et al., ICLR 2023)"),
    "Enhancing Adversarial Contrastive Learning via Adversarial Invariant": (
        "dynacl-air", "dynacl-air++", ("AIR (Xu et al., NeurIPS 2023); base DynACL per science/baselines-notes.md, "
                                       "the leaderboard names only the paper")),
    "Efficient Adversarial Contrastive Learning via Robustness-Aware": (
        "dynacl-rcs", None, ("RCS (Xu et al., NeurIPS 2023); base DynACL per science/baselines-notes.md, "
                             "the leaderboard names only the paper; coreset fraction not stated")),
    "Decoupled Adversarial Contrastive Learning": ("deacl", None, "DeACL (Zhang et al., ECCV 2022)"),
    "Effective Targeted Attacks for Adversarial Self-Supervised": ("taro", None, "TARO (NeurIPS 2023)"),
}
LEADERBOARD_MEASURES = (("sa", "clean", "standard accuracy"),
                        ("ra", "autoattack", "AutoAttack standard, L-inf, eps 8/255"),
                        ("ca", "common-corruptions", "accuracy under common corruptions"))
LEADERBOARD_PLACEHOLDERS = (37.92, 72.65, 80.65)
REFERENCE_COLUMNS = ("method", "dataset", "eval_dataset", "scheme", "attack", "metric", "value", "source", "note")


def leaderboard_method(paper: str, comment: str) -> tuple[str, str]:
    """Our method name and a note for one RobustSSL leaderboard row (raises on an unknown paper)."""
    for prefix, (method, post_processed, note) in LEADERBOARD_PAPERS.items():
        if paper.strip().startswith(prefix):
            if "post-processing" in comment.lower():
                return post_processed or method, note + "; with post-processing"
            return method, note
    raise ValueError(f"leaderboard paper {paper!r} has no method mapping: add it to LEADERBOARD_PAPERS")


def leaderboard_to_reference(rows: Iterable[dict[str, str]]) -> list[dict[str, Any]]:
    """Wide RobustSSL rows (ra/ca/sa × vanilla/autolora) to the long reference format; 0 = not reported, dropped."""
    out = []
    for row in rows:
        method, note = leaderboard_method(row["paper"], row.get("comment", ""))
        source = (f"https://robustssl.github.io/ (github.com/RobustSSL/RobustSSL.github.io, "
                  f"leaderboard/{row['pretrain']}-{row['downstream']}-{row['mode']}.js)")
        for finetune, suffix in (("vanilla", ""), ("autolora", "-autolora")):
            for prefix, attack, measure in LEADERBOARD_MEASURES:
                value = float(row[f"{prefix}_{finetune}"])
                if value == 0:
                    continue
                comment = row.get("comment", "").strip()
                extra = [f"{finetune} finetuning", measure, f"leaderboard comment: {comment}" if comment else ""]
                if finetune == "autolora" and value in LEADERBOARD_PLACEHOLDERS:
                    extra.append("value repeats across unrelated rows of the source (37.92/72.65/80.65): "
                                 "treat with care")
                out.append({"method": method, "dataset": row["pretrain"], "eval_dataset": row["downstream"],
                            "scheme": row["mode"] + suffix, "attack": attack, "metric": "accuracy", "value": value,
                            "source": source, "note": "; ".join(part for part in [note, *extra] if part)})
    return out


def convert_robustssl_leaderboard(source: str | Path, destination: str | Path) -> Path:
    """Write ``destination`` (long reference format) from the wide ``robustssl_leaderboard.csv``."""
    with open(source, newline="") as stream:
        rows = leaderboard_to_reference(csv.DictReader(stream))
    return write_atomic(Path(destination), csv_text(rows, REFERENCE_COLUMNS))


# --------------------------------------------------------------------------- paper table (A-InfoNCE Table 1 layout)


@dataclass
class PaperSection:
    """One dataset (and preset) of the paper table: per method row, our cells and reference candidates."""

    dataset: str
    label: str
    preset: str | None
    rows: list[tuple[str, str]]
    ours: dict[tuple[str, str, str], Cell]
    reference: dict[tuple[str, str, str], list[dict[str, Any]]]
    protocol: str = "unified"


def _paper_epsilon(row: dict[str, Any]) -> bool:
    return row["attack"] == "clean" or row["epsilon"] is None or abs(row["epsilon"] - PAPER_EPSILON) < 5e-4


def paper_sections(results: Sequence[dict[str, Any]], reference: Sequence[dict[str, Any]]) -> list[PaperSection]:
    """CIFAR-10 and CIFAR-100 sections: one per preset of ours found there (or one reference-only section)."""
    attacks = {attack for attack, _ in PAPER_ATTACKS}
    sections = []
    for dataset, label in PAPER_DATASETS:
        ours_rows = [row for row in results if row["metric"] == "accuracy" and row["dataset"] == dataset
                     and row["eval_dataset"] == dataset and row["attack"] in attacks and _paper_epsilon(row)]
        references: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for ref in reference:
            if (ref["dataset"], ref["eval_dataset"], ref.get("metric", "accuracy")) == (dataset, dataset, "accuracy"):
                references.setdefault((ref["method"], ref["scheme"], ref["attack"]), []).append(ref)
        for preset, protocol in sorted({(row["preset"], row["protocol"]) for row in ours_rows}) or [(None, "unified")]:
            chosen = latest_configuration([row for row in ours_rows
                                           if (row["preset"], row["protocol"]) == (preset, protocol)])
            table = build_table(TableKey(dataset, dataset, preset or "", PAPER_EPSILON, protocol), chosen,
                                sorted(attacks))
            sections.append(PaperSection(dataset, label, preset, _paper_rows(table, references),
                                         table.cells, references, protocol))
    return sections


def _paper_rows(table: Table, references: dict[tuple[str, str, str], list[dict[str, Any]]]) -> list[tuple[str, str]]:
    present = set(table.methods) | {method for method, _, _ in references}
    rows = list(PAPER_ROWS) + [(method, label) for method, label in ACL_ROWS if method in present]
    if UNSPECIFIED_AINFONCE in present:
        rows.append((UNSPECIFIED_AINFONCE, "A-InfoNCE (unspecified variant; reference only)"))
    return rows


class _Sources:
    """Numbers the reference footnotes: one per (file, method, dataset), listing its sources and notes."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}

    def mark(self, ref: dict[str, Any]) -> int:
        group = self.groups.setdefault((ref["file"], ref["method"], ref["dataset"]), [])
        if not any(ref is other for other in group):
            group.append(ref)
        return list(self.groups).index((ref["file"], ref["method"], ref["dataset"])) + 1

    def notes(self) -> list[str]:
        lines = []
        for index, ((file, method, dataset), refs) in enumerate(self.groups.items(), start=1):
            sources = " ; ".join(dict.fromkeys(ref.get("source", "") for ref in refs))
            notes = " | ".join(dict.fromkeys(ref.get("note", "") for ref in refs))
            lines.append(f"[{index}] {method}, {dataset} ({file}): {sources} — {notes}")
        return lines


def paper_cells(section: PaperSection, method: str, sources: _Sources) -> dict[str, list[tuple[str, Any]]]:
    """For one method: per column, (text, number) for ours, reference and Δ = ours − reference."""
    out: dict[str, list[tuple[str, Any]]] = {"ours": [], "reference": [], "Δ": []}
    for scheme in SCHEMES:
        for attack, _ in PAPER_ATTACKS:
            cell = section.ours.get((method, scheme, attack))
            candidates = section.reference.get((method, scheme, attack), [])
            ref = candidates[0] if candidates else None
            out["ours"].append((cell_text(cell, False), None if cell is None else cell.mean))
            out["reference"].append((MISSING, None) if ref is None else
                                    (f"{ref['value']:.2f} [{sources.mark(ref)}]", ref["value"]))
            delta = None if cell is None or ref is None else cell.mean - ref["value"]
            out["Δ"].append((MISSING if delta is None else f"{delta:+.2f}", delta))
    return out


def _alternatives(section: PaperSection, sources: _Sources) -> list[str]:
    lines = []
    for (method, scheme, attack), candidates in sorted(section.reference.items()):
        if scheme in SCHEMES and len(candidates) > 1 and any(method == m for m, _ in section.rows):
            others = ", ".join(f"{ref['value']:.2f} [{sources.mark(ref)}]" for ref in candidates[1:])
            lines.append(f"{method} {scheme} {dict(PAPER_ATTACKS)[attack]}: also {others}")
    return lines


PAPER_PREAMBLE = (
    "Layout of Table 1 of Yu et al., 'Adversarial Contrastive Learning via Asymmetric InfoNCE' (ECCV 2022): "
    "SA = clean accuracy, RA = PGD-20 accuracy (ε 8/255), AA = AutoAttack (standard, L∞, ε 8/255), in %. "
    "Δ = ours − reference. The paper's own Table 1 values were not retrieved and are not shown: reference cells "
    "come from author-quoted numbers and the RobustSSL leaderboard (a third-party re-evaluation with its own "
    "checkpoints and finetuning), so protocols differ cell by cell; see the numbered sources. "
    f"{MISSING} = missing, never filled in. Ours: last-epoch accuracy, mean ± std over seeds, of each method's "
    "most recently run configuration.")


def paper_markdown(sections: Sequence[PaperSection], sources: _Sources,
                   reference_dir: Path | None) -> tuple[str, list[dict[str, Any]]]:
    """The paper table as Markdown, and the same content as long CSV rows."""
    header = ["Method", "", *(f"{scheme} {label}" for scheme in SCHEMES for _, label in PAPER_ATTACKS)]
    origin = f"Reference numbers read from `{reference_dir}`." if reference_dir else "No reference files found."
    lines = ["# Paper table: A-InfoNCE Table 1 layout, ours vs reference", "", PAPER_PREAMBLE, "", origin, ""]
    csv_rows: list[dict[str, Any]] = []
    for section in sections:
        preset = section.preset or "(no results of ours)"
        epsilon = format_epsilon(PAPER_EPSILON)
        lines += [f"## {section.label} ({section.dataset}) · preset {preset} · protocol {section.protocol} · "
                  f"ε = {epsilon}", ""]
        banner = preset_banner(section.preset)
        lines += [f"> **{banner}**", ""] if banner else []
        lines += ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
        for method, label in section.rows:
            cells = paper_cells(section, method, sources)
            for kind, values in cells.items():
                lines.append("| " + " | ".join([label if kind == "ours" else "", kind, *(t for t, _ in values)]) + " |")
            csv_rows += _paper_csv_rows(section, method, cells)
        alternatives = _alternatives(section, sources)
        lines += [""] + [f"- Other published values for a cell: {line}" for line in alternatives] + [""]
    lines += ["## Sources", ""] + [f"- {note}" for note in sources.notes()] + [""]
    return "\n".join(lines), csv_rows


PAPER_CSV_COLUMNS = ("dataset", "preset", "method", "scheme", "attack", "column", "ours", "reference", "delta",
                     "reference_file", "reference_source")


def _paper_csv_rows(section: PaperSection, method: str,
                    cells: dict[str, list[tuple[str, Any]]]) -> list[dict[str, Any]]:
    columns = [(scheme, attack, label) for scheme in SCHEMES for attack, label in PAPER_ATTACKS]
    rows = []
    for index, (scheme, attack, label) in enumerate(columns):
        values = {kind: cells[kind][index][1] for kind in cells}
        ref = (section.reference.get((method, scheme, attack)) or [{}])[0]
        rows.append({"dataset": section.dataset, "preset": section.preset or "", "method": method, "scheme": scheme,
                     "attack": attack, "column": f"{scheme} {label}", "reference_file": ref.get("file", ""),
                     "reference_source": ref.get("source", ""),
                     **{key: "" if values[kind] is None else round(values[kind], 4)
                        for key, kind in (("ours", "ours"), ("reference", "reference"), ("delta", "Δ"))}})
    return rows


def paper_latex(sections: Sequence[PaperSection], sources: _Sources) -> str:
    """Booktabs version: per dataset a table with ours / reference / Δ sub-rows per method."""
    out = ["% requires \\usepackage{booktabs}"]
    for section in sections:
        banner = preset_banner(section.preset)
        caption = latex_escape(f"{section.label}, preset {section.preset or '(no results of ours)'}, "
                               "ε = 8/255: ours vs reference, Δ = ours − reference"
                               + (f". {banner}." if banner else ""))
        out += ["\\begin{table}[t]", "\\centering", "\\small", f"\\caption{{{caption}}}",
                "\\begin{tabular}{ll" + "ccc" * len(SCHEMES) + "}", "\\toprule",
                " & & " + " & ".join(f"\\multicolumn{{3}}{{c}}{{{scheme}}}" for scheme in SCHEMES) + " \\\\",
                " ".join(f"\\cmidrule(lr){{{3 + 3 * i}-{5 + 3 * i}}}" for i in range(len(SCHEMES))),
                "Method & & " + " & ".join(label for _ in SCHEMES for _, label in PAPER_ATTACKS) + " \\\\", "\\midrule"]
        for method, label in section.rows:
            for kind, values in paper_cells(section, method, sources).items():
                name = latex_escape(label) if kind == "ours" else ""
                out.append(" & ".join([name, latex_escape(kind), *(latex_escape(t) for t, _ in values)]) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    out += ["% Sources:"] + [f"% {note}" for note in sources.notes()]
    return "\n".join(out) + "\n"


def write_paper_tables(results: Sequence[dict[str, Any]], reference_dir: str | Path | None,
                       out_dir: str | Path) -> list[Path]:
    """``paper_table1.{md,csv,tex}``: the A-InfoNCE Table 1 layout with ours, reference and Δ per cell."""
    directory = resolve_reference_dir(reference_dir)
    sections = paper_sections(results, load_reference(directory))
    sources = _Sources()
    markdown, csv_rows = paper_markdown(sections, sources, directory)
    latex = paper_latex(sections, sources)
    out_dir = Path(out_dir)
    return [write_atomic(out_dir / "paper_table1.md", markdown),
            write_atomic(out_dir / "paper_table1.csv", csv_text(csv_rows, PAPER_CSV_COLUMNS)),
            write_atomic(out_dir / "paper_table1.tex", latex)]


# --------------------------------------------------------------------------- index and entry point


def _provenance(rows: Sequence[dict[str, Any]]) -> str:
    def values(column: str) -> str:
        found = sorted({str(row.get(column) or "") for row in rows} - {""})
        return ", ".join(f"`{value}`" for value in found) or MISSING
    return f"preset {values('preset')}; config_hash {values('config_hash')}; code_version {values('code_version')}"


def write_index(artifacts: Sequence[Artifact], reports_dir: Path, results_csv: Path, n_rows: int) -> Path:
    """``index.md``: a link to every table and figure with its provenance; skipped plots say why."""
    lines = ["# acl-bench report", "",
             (f"Generated by `bench report` from `{results_csv}` ({n_rows} rows); "
              "a report only reads stored results."), ""]
    banners = sorted({banner for a in artifacts for row in a.rows if (banner := preset_banner(row["preset"]))})
    lines += [f"> **{banner}**" for banner in banners] + ([""] if banners else [])
    for kind, heading in (("table", "Tables"), ("paper", "Paper comparison"), ("figure", "Figures")):
        chosen = [a for a in artifacts if a.kind == kind and not a.skipped]
        if chosen:
            lines += [f"## {heading}", ""]
            for artifact in chosen:
                links = ", ".join(f"[{path.name}]({path.relative_to(reports_dir).as_posix()})"
                                  for path in artifact.paths)
                lines.append(f"- **{artifact.title}**: {links} — {_provenance(artifact.rows)}")
            lines.append("")
    skipped = [a for a in artifacts if a.skipped]
    if skipped:
        lines += ["## Skipped (no data)", ""] + [f"- {a.title}: skipped, {a.skipped}" for a in skipped] + [""]
    return write_atomic(reports_dir / "index.md", "\n".join(lines))


def _other_attacks_note(results: Sequence[dict[str, Any]]) -> str:
    shown = {attack for attack, _ in TABLE_ATTACKS}
    others = sorted({row["attack"] for row in results if row["attack"] not in shown})
    return f" Other attacks in the store (not in these tables): {', '.join(others)}." if others else ""


def table_artifacts(results: Sequence[dict[str, Any]], reports_dir: Path) -> tuple[list[Table], list[Artifact]]:
    """Main (last-epoch) tables and the separate best-epoch tables."""
    tables = build_tables(results, "accuracy")
    main = write_tables(tables, reports_dir, "results", "",
                        "Results: last-epoch accuracy (%)." + _other_attacks_note(results))
    artifacts = [Artifact("table", "Results (last-epoch accuracy)", main, [r for t in tables for r in t.rows])]
    best = build_tables(results, BEST_EPOCH_METRIC)
    if best:
        paths = write_tables(best, reports_dir, "results_best_epoch", "Best-on-test epoch — ",
                             "Best-on-test-epoch accuracy (%): labelled extra as the released scripts print it; "
                             "chosen on the test set, not the result")
        artifacts.append(Artifact("table", "Best-on-test epoch (labelled extra, not the result)", paths,
                                  [r for t in best for r in t.rows]))
    else:
        artifacts.append(Artifact("table", "Best-on-test epoch table", [], [], f"no `{BEST_EPOCH_METRIC}` rows"))
    return tables, artifacts


SANITY_COLUMNS = ("run_id", "method", "scheme", "check", "passed", "detail")


def sanity_rows(results: Sequence[dict[str, Any]], runs_dir: Path) -> list[dict[str, Any]]:
    """Every recorded sanity check (``runs/<run>/sanity_<scheme>.json``) of the runs in the results."""
    runs = {row["run_id"]: row["method"] for row in results}
    rows = []
    for run_id, method in sorted(runs.items()):
        for path in sorted((runs_dir / run_id).glob("sanity_*.json")):
            scheme = path.stem.removeprefix("sanity_")
            try:
                checks = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            rows += [{"run_id": run_id, "method": method, "scheme": scheme, "check": name,
                      "passed": bool(check.get("passed")), "detail": check.get("detail", "")}
                     for name, check in sorted(checks.items())]
    return rows


def write_sanity_report(results: Sequence[dict[str, Any]], runs_dir: Path, reports_dir: Path) -> Artifact:
    """``sanity.md`` / ``sanity.csv``: each check of each evaluation, passed or failed, with its numbers."""
    title = "Sanity checks of every evaluation (passed and failed)"
    rows = sanity_rows(results, runs_dir)
    if not rows:
        return Artifact("table", title, [], [], "no sanity_<scheme>.json in the run directories")
    failed = [row for row in rows if not row["passed"]]
    lines = ["# Sanity checks", "",
             f"{len(rows)} checks over {len({(r['run_id'], r['scheme']) for r in rows})} evaluations; "
             f"{len(failed)} failed (those rows carry a `suspect:<check>` flag in results.csv).", "",
             "| Method | Scheme | Check | Passed | Numbers |", "|---|---|---|---|---|"]
    rank = {method: index for index, method in enumerate(order_methods(row["method"] for row in rows))}
    for row in sorted(rows, key=lambda r: (rank[r["method"]], r["scheme"], r["check"])):
        mark = "yes" if row["passed"] else "**NO**"
        detail = str(row["detail"]).replace("|", "\\|")
        lines.append(f"| {row['method']} | {row['scheme']} | {row['check']} | {mark} | {detail} |")
    paths = [write_atomic(reports_dir / "sanity.md", "\n".join(lines) + "\n"),
             write_atomic(reports_dir / "sanity.csv", csv_text(rows, SANITY_COLUMNS))]
    run_ids = {row["run_id"] for row in rows}
    return Artifact("table", title, paths, [row for row in results if row["run_id"] in run_ids])


def write_reports(results_csv: str | Path, reports_dir: str | Path, runs_dir: str | Path,
                  reference_dir: str | Path | None, paper: bool = False,
                  curve_methods: Sequence[str] | None = None) -> list[Path]:
    """Write every table, figure and ``index.md`` from the stored results; returns the paths written.

    The paper table is written when ``paper`` is set or when the results hold CIFAR-10/100 rows.
    """
    results = load_results(results_csv)
    reports_dir, figures_dir = Path(reports_dir), Path(reports_dir) / "figures"
    tables, artifacts = table_artifacts(results, reports_dir)
    for table in tables:
        artifacts += [plot_robust_vs_clean(table, figures_dir), plot_bars(table, figures_dir)]
    artifacts += loss_curve_artifacts(tables, Path(runs_dir), figures_dir)
    artifacts.append(write_sanity_report(results, Path(runs_dir), reports_dir))
    artifacts += plot_epsilon_curves(results, figures_dir, curve_methods)
    paper_rows = [row for row in results if row["dataset"] in dict(PAPER_DATASETS)]
    if paper or paper_rows:
        artifacts.append(Artifact("paper", "Paper table (A-InfoNCE Table 1 layout): ours, reference, Δ",
                                  write_paper_tables(results, reference_dir, reports_dir), paper_rows))
    index = write_index(artifacts, reports_dir, Path(results_csv), len(results))
    return [path for artifact in artifacts for path in artifact.paths] + [index]
