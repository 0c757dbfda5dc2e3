"""Results tables: which rows form a table, and each cell's mean, std and 95 % interval (pandas).

A table holds the rows measured on the same data, preset, finetuning protocol (``bench.evaluation.protocols``)
and attack budget (``TableKey``); its
cells are methods × (scheme, attack). A method run with several configurations gets one row per
configuration (``method [config_hash]``), so different settings are never averaged together.

Each cell carries its uncertainty (``Cell.interval``, bench.products.stats): for a single run, the Wilson
score interval of its accuracy over the n_eval test images (the number correct is binomial); over
several seeds, the Student-t interval of the mean (seed-to-seed variation, which already contains
the test-image noise of each seed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from bench.config import SCHEMES
from bench.products.report.common import MethodOrder, epsilon_slug, format_epsilon, round_epsilon, slug, tags
from bench.products.stats import seed_summary, wilson_interval

SUPERVISED_AT = "AT"  # RobustBench zoo models (`bench evaluate --robustbench-model`): no finetuning
BASE_ATTACKS = (("clean", "SA"), ("pgd20", "PGD-20"))
STRONG_ATTACKS = (("autoattack", "AA"), ("apgd-ce", "APGD-CE"))  # see Table.attacks
TABLE_ATTACKS = BASE_ATTACKS + STRONG_ATTACKS
BEST_EPOCH_METRIC = "accuracy_best_epoch"
DATA = ["dataset", "eval_dataset", "preset", "protocol"]  # rows of different protocols never share a cell


@dataclass(frozen=True)
class TableKey:
    """One results table: rows measured on the same data, preset, finetuning protocol and attack budget."""

    dataset: str
    eval_dataset: str
    preset: str
    epsilon: float | None
    protocol: str = "unified"

    def title(self) -> str:
        return (
            f"{self.dataset} → {self.eval_dataset} · preset {self.preset} · protocol {self.protocol} · "
            f"ε = {format_epsilon(self.epsilon)} (L∞)"
        )

    def slug(self) -> str:
        return slug(
            f"{self.dataset}-{self.eval_dataset}_{self.preset}{protocol_slug(self.protocol)}"
            f"_eps{epsilon_slug(self.epsilon)}"
        )


def protocol_slug(protocol: str) -> str:
    """'' for the default protocol (file names of unified stores are unchanged), else ``_<protocol>``."""
    return "" if protocol == "unified" else f"_{protocol}"


@dataclass(frozen=True)
class CellInterval:
    """A cell's 95 % interval (percent) and which one it is: 'wilson' (one run) or 't' (over seeds)."""

    low: float
    high: float
    method: str

    def half_width(self, mean: float) -> float:
        """The larger side (an asymmetric Wilson interval printed as ± stays conservative)."""
        return max(mean - self.low, self.high - mean)


@dataclass(frozen=True)
class Cell:
    """One table cell: mean and sample std over seeds (``values``, of ``seeds``), the suspect tags and every
    tag of its rows, and the number of test images each value was measured on (None when unknown or mixed)."""

    mean: float
    std: float | None
    n: int
    suspect: tuple[str, ...]
    flags: tuple[str, ...]
    values: tuple[float, ...] = ()
    seeds: tuple[str, ...] = ()
    n_eval: int | None = None
    runs: tuple[str, ...] = ()  # the run id behind each value (where its per-image record is)

    @property
    def interval(self) -> CellInterval | None:
        """Wilson over the n_eval images for one run; Student-t over seeds for several; None when neither
        applies (one run of unknown n_eval)."""
        if self.n >= 2:
            summary = seed_summary(self.values)
            return CellInterval(summary.low, summary.high, "t")
        if self.n == 1 and self.n_eval:
            correct = min(self.n_eval, max(0, round(self.mean * self.n_eval / 100)))
            wilson = wilson_interval(correct, self.n_eval)
            return CellInterval(wilson.low, wilson.high, "wilson")
        return None


CLASSIFIER_LEVEL = "classifiers (one seed)"


@dataclass(frozen=True)
class VersusBase:
    """A variant cell against its base method's cell, and which question it answers (issue 20 §1).

    ``level`` is ``CLASSIFIER_LEVEL`` for two single runs (exact McNemar on their images: do these two
    trained classifiers differ? verdict "classifiers differ", never a method verdict) or
    ``method (k seeds)`` for ≥ 2 shared seeds (bench.products.method_level: does the method differ?)."""

    level: str
    seeds: int
    n: int | None  # test images per seed; None without per-image records
    base: float  # accuracy %, mean over the compared seeds
    variant: float
    difference: float  # points, variant − base
    low: float
    high: float
    p_value: float
    test: str
    verdict: str
    discordant: float | None = None  # ψ, share of images the two classify differently (mean over seeds)
    detectable: float | None = None  # image-level MDD of one seed (points), exact McNemar, 80 % power
    between_seed_sd: float = float("nan")  # points; method level with per-image records only
    seeds_needed: int | None = None  # seeds to detect 3 points with 80 % power (method level; None: unknown)
    # one seed: the seeds a method verdict would need if the seeds varied by image noise alone (τ = 0): a lower bound
    seeds_needed_at_least: int | None = None

    @property
    def is_method_level(self) -> bool:
        return self.level != CLASSIFIER_LEVEL


@dataclass
class Table:
    """Methods × (scheme, attack) cells for one :class:`TableKey`; ``rows`` are all rows behind it."""

    key: TableKey
    methods: list[str]
    cells: dict[tuple[str, str, str], Cell]
    rows: pd.DataFrame
    # variant cell key → its paired test against the base method's cell (bench.products.report.significance)
    versus_base: dict[tuple[str, str, str], VersusBase] = field(default_factory=dict)

    @property
    def attacks(self) -> tuple[tuple[str, str], ...]:
        """The columns of each scheme, (attack, label): SA, PGD-20, then AA and/or APGD-CE as measured (an
        empty AA column when neither was). APGD-CE, AutoAttack's first attack alone, is the smoke preset's
        fast stand-in for AA (docs/design.md §5): its own column, so that it never passes for AutoAttack."""
        measured = {attack for _, _, attack in self.cells}
        strong = [column for column in STRONG_ATTACKS if column[0] in measured] or [STRONG_ATTACKS[0]]
        return BASE_ATTACKS + tuple(strong)

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
    latest = (
        frame.assign(_seed=seed).sort_values("timestamp", kind="stable").drop_duplicates([*by, "_seed"], keep="last")
    )
    grouped = latest.groupby(list(by), sort=False, dropna=False)
    stats = grouped["value"].agg(mean="mean", std="std", n="size", values=tuple)
    stats["seeds"] = grouped["_seed"].agg(lambda seeds: tuple(map(str, seeds)))
    stats["runs"] = grouped["run_id"].agg(lambda runs: tuple(map(str, runs)))
    stats["n_eval"] = grouped["n_eval"].agg(_common_n_eval)
    stats["suspect"] = grouped["flags"].agg(lambda flags: tags(flags, suspect=True))
    stats["flags"] = grouped["flags"].agg(tags)
    return stats


def _common_n_eval(values: pd.Series) -> int | None:
    """The n_eval all rows of a cell share; None when one is unknown or they differ."""
    distinct = set(values.tolist())
    if len(distinct) != 1 or any(pd.isna(value) for value in distinct):
        return None
    return int(distinct.pop())


def cells_of(stats: pd.DataFrame) -> dict[tuple, Cell]:
    """``aggregate``'s frame as cells keyed by its group keys."""
    return {
        cell.Index: Cell(
            float(cell.mean),
            None if cell.n < 2 else float(cell.std),
            int(cell.n),
            cell.suspect,
            cell.flags,
            tuple(map(float, cell.values)),
            cell.seeds,
            None if pd.isna(cell.n_eval) else int(cell.n_eval),
            cell.runs,
        )
        for cell in stats.itertuples()
    }


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
    """Rows of ``metric`` grouped by table; clean rows without ε join every table of their data, preset and
    protocol."""
    rows = results[results["metric"] == metric]
    floating = rows["epsilon"].isna() & (rows["attack"] == "clean")
    fixed = rows[~floating]
    fixed = fixed.assign(table_epsilon=fixed["epsilon"].map(round_epsilon))  # from the selection, never ``rows``:
    # an empty frame would take the index of the longer series assigned to it
    budgets = fixed[[*DATA, "table_epsilon"]].drop_duplicates()
    joined = rows[floating].merge(budgets, on=DATA, how="left")  # no table of its data: a table without ε
    grouped = pd.concat([fixed, joined], ignore_index=True).groupby([*DATA, "table_epsilon"], dropna=False)
    tables = {
        TableKey(*key[:3], round_epsilon(key[4]), key[3]): group.drop(columns="table_epsilon") for key, group in grouped
    }
    order = lambda key: (
        key.dataset,
        key.eval_dataset,
        key.preset,
        key.protocol,
        -1.0 if key.epsilon is None else key.epsilon,
    )
    return {key: tables[key] for key in sorted(tables, key=order)}


def build_table(key: TableKey, rows: pd.DataFrame, order: MethodOrder, attacks: Sequence[str] | None = None) -> Table:
    """Aggregate ``rows`` into cells for the given attacks (default: clean, PGD-20, AutoAttack, APGD-CE)."""
    attacks = tuple(attacks or (attack for attack, _ in TABLE_ATTACKS))
    labelled = rows.assign(label=row_labels(rows))
    chosen = labelled[labelled["scheme"].isin([*SCHEMES, SUPERVISED_AT]) & labelled["attack"].isin(attacks)]
    cells = cells_of(aggregate(chosen, ["label", "scheme", "attack"]))
    return Table(key, order.sort(label for label, _, _ in cells), cells, rows)


def build_tables(results: pd.DataFrame, order: MethodOrder, metric: str = "accuracy") -> list[Table]:
    return [build_table(key, rows, order) for key, rows in group_tables(results, metric).items()]
