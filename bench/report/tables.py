"""Results tables: which rows form a table, and each cell's mean ± std over seeds (pandas).

A table holds the rows measured on the same data, preset and attack budget (``TableKey``); its
cells are methods × (scheme, attack). A method run with several configurations gets one row per
configuration (``method [config_hash]``), so different settings are never averaged together.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from bench.config import SCHEMES
from bench.report.common import MethodOrder, epsilon_slug, format_epsilon, round_epsilon, slug, tags

SUPERVISED_AT = "AT"  # RobustBench zoo models (`bench evaluate --robustbench-model`): no finetuning
TABLE_ATTACKS = (("clean", "SA"), ("pgd20", "PGD-20"), ("autoattack", "AA"))
BEST_EPOCH_METRIC = "accuracy_best_epoch"
DATA = ["dataset", "eval_dataset", "preset"]


@dataclass(frozen=True)
class TableKey:
    """One results table: rows measured on the same data, preset and attack budget."""

    dataset: str
    eval_dataset: str
    preset: str
    epsilon: float | None

    def title(self) -> str:
        return (f"{self.dataset} → {self.eval_dataset} · preset {self.preset} · "
                f"ε = {format_epsilon(self.epsilon)} (L∞)")

    def slug(self) -> str:
        return slug(f"{self.dataset}-{self.eval_dataset}_{self.preset}_eps{epsilon_slug(self.epsilon)}")


@dataclass(frozen=True)
class Cell:
    """One table cell: mean and sample std over seeds (``values``), the suspect tags and every tag of its rows."""

    mean: float
    std: float | None
    n: int
    suspect: tuple[str, ...]
    flags: tuple[str, ...]
    values: tuple[float, ...] = ()


@dataclass
class Table:
    """Methods × (scheme, attack) cells for one :class:`TableKey`; ``rows`` are all rows behind it."""

    key: TableKey
    methods: list[str]
    cells: dict[tuple[str, str, str], Cell]
    rows: pd.DataFrame

    @property
    def schemes(self) -> tuple[str, ...]:
        """SLF, ALF, AFF, plus AT when the table holds supervised adversarial-training models."""
        return SCHEMES + ((SUPERVISED_AT,) if any(s == SUPERVISED_AT for _, s, _ in self.cells) else ())

    def best(self, scheme: str, attack: str) -> float | None:
        values = [cell.mean for (_, s, a), cell in self.cells.items() if (s, a) == (scheme, attack)]
        return max(values) if values else None

    def is_best(self, cell: Cell, scheme: str, attack: str) -> bool:
        best = self.best(scheme, attack)
        return best is not None and round(cell.mean, 2) == round(best, 2)


def aggregate(frame: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Per group of ``by``: mean and sample std (ddof 1) over seeds, n, suspect tags and all tags.

    A rerun of the same seed supersedes the older row (latest ``timestamp``); rows without a seed
    count once per run."""
    seed = frame["seed"].astype("string").fillna("run:" + frame["run_id"])
    latest = (frame.assign(_seed=seed).sort_values("timestamp", kind="stable")
              .drop_duplicates([*by, "_seed"], keep="last"))
    grouped = latest.groupby(list(by), sort=False, dropna=False)
    stats = grouped["value"].agg(mean="mean", std="std", n="size", values=tuple)
    stats["suspect"] = grouped["flags"].agg(lambda flags: tags(flags, suspect=True))
    stats["flags"] = grouped["flags"].agg(tags)
    return stats


def cells_of(stats: pd.DataFrame) -> dict[tuple, Cell]:
    """``aggregate``'s frame as cells keyed by its group keys."""
    return {cell.Index: Cell(float(cell.mean), None if cell.n < 2 else float(cell.std), int(cell.n), cell.suspect,
                             cell.flags, tuple(map(float, cell.values))) for cell in stats.itertuples()}


def row_labels(frame: pd.DataFrame) -> pd.Series:
    """Table row label of each result row: its method, or ``method [config_hash]`` when the method
    was run with several configurations (seeds of one configuration share a hash)."""
    several = frame.groupby("method")["config_hash"].transform("nunique") > 1
    return frame["method"].where(~several, frame["method"] + " [" + frame["config_hash"] + "]")


def latest_configuration(frame: pd.DataFrame) -> pd.DataFrame:
    """Per method, only the rows of its most recently run configuration (for one-row-per-method layouts)."""
    newest = frame.sort_values(["timestamp", "config_hash"]).groupby("method")["config_hash"].last()
    return frame[frame["config_hash"] == frame["method"].map(newest)]


def group_tables(results: pd.DataFrame, metric: str = "accuracy") -> dict[TableKey, pd.DataFrame]:
    """Rows of ``metric`` grouped by table; clean rows without ε join every table of their data and preset."""
    rows = results[results["metric"] == metric]
    floating = rows["epsilon"].isna() & (rows["attack"] == "clean")
    fixed = rows[~floating]
    fixed = fixed.assign(table_epsilon=fixed["epsilon"].map(round_epsilon))  # from the selection, never ``rows``:
    # an empty frame would take the index of the longer series assigned to it
    budgets = fixed[[*DATA, "table_epsilon"]].drop_duplicates()
    joined = rows[floating].merge(budgets, on=DATA, how="left")  # no table of its data: a table without ε
    grouped = pd.concat([fixed, joined], ignore_index=True).groupby([*DATA, "table_epsilon"], dropna=False)
    tables = {TableKey(*key[:3], round_epsilon(key[3])): group.drop(columns="table_epsilon")
              for key, group in grouped}
    order = lambda key: (key.dataset, key.eval_dataset, key.preset, -1.0 if key.epsilon is None else key.epsilon)
    return {key: tables[key] for key in sorted(tables, key=order)}


def build_table(key: TableKey, rows: pd.DataFrame, order: MethodOrder,
                attacks: Sequence[str] | None = None) -> Table:
    """Aggregate ``rows`` into cells for the given attacks (default: clean, PGD-20, AutoAttack)."""
    attacks = tuple(attacks or (attack for attack, _ in TABLE_ATTACKS))
    labelled = rows.assign(label=row_labels(rows))
    chosen = labelled[labelled["scheme"].isin([*SCHEMES, SUPERVISED_AT]) & labelled["attack"].isin(attacks)]
    cells = cells_of(aggregate(chosen, ["label", "scheme", "attack"]))
    return Table(key, order.sort(label for label, _, _ in cells), cells, rows)


def build_tables(results: pd.DataFrame, order: MethodOrder, metric: str = "accuracy") -> list[Table]:
    return [build_table(key, rows, order) for key, rows in group_tables(results, metric).items()]
