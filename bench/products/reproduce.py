"""``bench reproduce TABLE``: the rows of a published table, run under its protocol, set beside it.

A reproduction is a plan (paper preset, the table's protocol, the table's methods, one run per
dataset and seed) and a comparison written from the store after it ran: per (method, scheme,
attack) our last-epoch mean, our best-on-test-epoch mean (labelled: the epoch is chosen on the
test set, as the released scripts do), the published cell and Δ = ours − published, taken on
the epoch the table's source reports (``SchemeSettings.reported_epoch``). Numbers published
under another protocol (author-quoted, RobustSSL leaderboard) are listed beside, with it.

Tables:
- ``ainfonce-table1``: Yu et al. (ECCV 2022) Table 1, RoCL and AdvCL with -IP/-HN/-IPHN on
  CIFAR-10/100, protocol ``ainfonce``; its own cells come from ``ainfonce_table1.csv`` in the
  reference directory (not retrieved so far: they stay "–" until someone adds the file);
- ``robustssl``: the RobustSSL leaderboard's methods that the suite has, protocol ``robustssl``
  (``robustssl_leaderboard.csv``).
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import ConfigError, did_you_mean
from bench.evaluation.finetune import scheme_settings
from bench.methodkit import registry
from bench.runs.plan import MethodRun, RunPlan, RunRequest, build_plan
from bench.store.atomic import write_atomic
from bench.store.results import ResultsStore
from bench.store.rows import ResultRow

ATTACKS = ("clean", "pgd20", "autoattack")
SCHEME_ORDER = ("SLF", "ALF", "AFF")
REFERENCE_PROTOCOLS = {  # reference file -> the protocol its numbers were produced under
    "ainfonce_table1.csv": "ainfonce (the paper)",
    "author_quoted.csv": "the authors' own script",
    "robustssl_leaderboard.csv": "robustssl",
}


@dataclass(frozen=True)
class ReproduceTable:
    """A published table: its methods, protocol, datasets and the reference file holding its cells."""

    name: str
    title: str
    methods: tuple[str, ...]
    protocol: str
    datasets: tuple[str, ...]
    reference: str  # file in the reference directory with the table's own cells
    others: tuple[str, ...]  # reference files shown beside, with their protocol

    def registered_methods(self) -> tuple[str, ...]:
        return tuple(name for name in self.methods if name in registry.available())


TABLES = {
    "ainfonce-table1": ReproduceTable(
        "ainfonce-table1",
        "A-InfoNCE (Yu et al., ECCV 2022) Table 1",
        ("rocl", "rocl-ip", "rocl-hn", "rocl-iphn", "advcl", "advcl-ip", "advcl-hn", "advcl-iphn"),
        "ainfonce",
        ("cifar10", "cifar100"),
        "ainfonce_table1.csv",
        ("author_quoted.csv", "robustssl_leaderboard.csv"),
    ),
    "robustssl": ReproduceTable(
        "robustssl",
        "RobustSSL leaderboard (robustssl.github.io), vanilla finetuning",
        ("acl", "rocl", "advcl", "dynacl", "dynacl++", "deacl"),
        "robustssl",
        ("cifar10", "cifar100"),
        "robustssl_leaderboard.csv",
        ("author_quoted.csv",),
    ),
}


def get_table(name: str) -> ReproduceTable:
    if name not in TABLES:
        raise ConfigError(f"table={name!r} is invalid{did_you_mean(name, TABLES)}: allowed {sorted(TABLES)}")
    return TABLES[name]


def reproduce_plan(
    table: ReproduceTable, request: RunRequest, datasets: Sequence[str], seeds: Sequence[int]
) -> RunPlan:
    """One plan for every (dataset, seed) of the reproduction; the table's protocol and methods are fixed."""
    for dataset in datasets:
        if dataset not in table.datasets:
            raise ConfigError(f"dataset={dataset!r} is invalid for {table.name}: allowed {list(table.datasets)}")
    fixed = [key for key in ("data.name", "seed") if key in request.overrides]
    if fixed:
        raise ConfigError(f"{fixed[0]} is invalid in a reproduction's overrides: pass datasets and seeds separately")
    protocol = request.overrides.get("finetune.protocol", table.protocol)  # --protocol: the same rows, another protocol
    plans = []
    for dataset in datasets:
        for seed in seeds:
            overrides = {**request.overrides, "finetune.protocol": protocol, "data.name": dataset, "seed": str(seed)}
            plans.append(
                build_plan(
                    RunRequest(
                        preset=request.preset,
                        overrides=overrides,
                        method_params=request.method_params,
                        methods=table.registered_methods(),
                        force=request.force,
                        resume=request.resume,
                        dry_run=request.dry_run,
                    )
                )
            )
    runs = tuple(run for plan in plans for run in plan.runs)
    return RunPlan(plans[0].base, runs, force=request.force, resume=request.resume, track=request.track)


# --------------------------------------------------------------------------- the comparison


def read_reference(path: Path) -> list[dict[str, str]]:
    """A reference file (results/reference/README.md format); missing file = no cells."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as stream:
        return [row for row in csv.DictReader(stream) if row.get("metric", "accuracy") == "accuracy"]


def _mean_std(values: list[float]) -> tuple[float | None, float | None, int]:
    if not values:
        return None, None, 0
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None), len(values)


def _cell(values: list[float]) -> str:
    mean, std, n = _mean_std(values)
    if mean is None:
        return "–"
    return f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "") + (f" (n={n})" if n > 1 else "")


def comparison_rows(
    table: ReproduceTable,
    runs: Sequence[MethodRun],
    rows: Iterable[ResultRow],
    references: dict[str, list[dict[str, str]]],
    dataset: str,
) -> list[dict[str, Any]]:
    """One line per (method, scheme, attack) of ``dataset``: ours (last, best epoch), published, Δ, others."""

    ours: dict[tuple[str, str, str, str], list[float]] = {}
    # the table's methods only: a distilling method's teacher run (DeACL's SimCLR) is in the plan, not the table
    plan_runs = {run.run_id: run for run in runs if run.config.data.name == dataset and run.method in table.methods}
    for row in rows:
        if row.run_id in plan_runs:
            ours.setdefault((row.method, row.scheme, row.attack, row.metric), []).append(row.value)
    lines = []
    for method in dict.fromkeys(run.method for run in plan_runs.values()):
        config = next(run.config for run in plan_runs.values() if run.method == method)
        for scheme in [name for name in SCHEME_ORDER if name in config.finetune.schemes]:
            reported = scheme_settings(config, scheme, method).reported_epoch
            for attack in ATTACKS:
                last = ours.get((method, scheme, attack, "accuracy"), [])
                best = ours.get((method, scheme, attack, "accuracy_best_epoch"), [])
                published = _published(references.get(table.reference, []), method, dataset, scheme, attack)
                compared = best if reported == "best" and best else last
                mean = _mean_std(compared)[0]
                delta = None if mean is None or published is None else mean - published
                lines.append(
                    {
                        "dataset": dataset,
                        "method": method,
                        "scheme": scheme,
                        "attack": attack,
                        "ours_last": _mean_std(last)[0],
                        "ours_best_epoch": _mean_std(best)[0],
                        "n": len(last),
                        "ours_last_text": _cell(last),
                        "ours_best_text": _cell(best),
                        "reported_epoch": "best" if compared is best and best else "last",
                        "published": published,
                        "delta": delta,
                        "others": _others(table, references, method, dataset, scheme, attack),
                    }
                )
    return lines


def _matching(rows: list[dict[str, str]], method: str, dataset: str, scheme: str, attack: str) -> list[dict[str, str]]:
    return [
        row
        for row in rows
        if (row["method"], row["dataset"], row.get("eval_dataset") or row["dataset"], row["scheme"], row["attack"])
        == (method, dataset, dataset, scheme, attack)
    ]


def _published(rows: list[dict[str, str]], method: str, dataset: str, scheme: str, attack: str) -> float | None:
    found = _matching(rows, method, dataset, scheme, attack)
    return float(found[0]["value"]) if found else None


def _others(
    table: ReproduceTable,
    references: dict[str, list[dict[str, str]]],
    method: str,
    dataset: str,
    scheme: str,
    attack: str,
) -> str:
    """Numbers of this cell published under other protocols, each with its protocol."""
    texts = [
        f"{float(row['value']):.2f} [{REFERENCE_PROTOCOLS.get(name, name)}]"
        for name in table.others
        for row in _matching(references.get(name, []), method, dataset, scheme, attack)
    ]
    return "; ".join(texts)


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


COMPARISON_COLUMNS = (
    "dataset",
    "protocol",
    "method",
    "scheme",
    "attack",
    "ours_last",
    "ours_best_epoch",
    "n",
    "reported_epoch",
    "published",
    "delta",
    "others",
)


def comparison_markdown(
    table: ReproduceTable,
    dataset: str,
    lines: Sequence[dict[str, Any]],
    preset: str,
    protocol: str,
    unassigned: Sequence[dict[str, str]],
) -> str:
    """The reproduction beside the published table, Δ on the epoch the source reports."""
    other = "" if protocol == table.protocol else f" (the table's own protocol is {table.protocol})"
    present = "present" if any(line["published"] is not None for line in lines) else "absent: –"
    text = [
        f"# Reproduction: {table.title} — {dataset} · protocol {protocol}",
        "",
        f"Protocol **{protocol}**{other} (docs/protocols.md) · preset {preset} · published cells from "
        f"`{table.reference}` ({present}). *Best epoch* = the epoch with the best test PGD-20 accuracy, chosen "
        "on the test set as the released scripts print it (no AutoAttack there); Δ = ours − published on the "
        "epoch the protocol's source reports (column *compared*).",
        "",
        "| method | scheme | attack | ours (last epoch) | ours (best epoch, test-selected) | compared | published "
        "| Δ | published under other protocols |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for line in lines:
        text.append(
            f"| {line['method']} | {line['scheme']} | {line['attack']} | {line['ours_last_text']} | "
            f"{line['ours_best_text']} | {line['reported_epoch']} | {_number(line['published'])} | "
            f"{_number(line['delta'])} | {line['others'] or '–'} |"
        )
    if unassigned:
        text += ["", "Published numbers not assigned to one of our methods (shown for reference only):", ""]
        text += [
            f"- {row['method']} {row['scheme']} {row['attack']}: {float(row['value']):.2f} "
            f"[{REFERENCE_PROTOCOLS.get(row['_file'], row['_file'])}]"
            for row in unassigned
        ]
    return "\n".join(text) + "\n"


def write_reproduction(table: ReproduceTable, plan: RunPlan, reference_dir: Path, reports_dir: Path) -> list[Path]:
    """Markdown and CSV per dataset of the plan, written atomically from the store (after the runs)."""
    rows = ResultsStore(plan.results_dir).read_rows()
    names = (table.reference, *table.others)
    references = {name: read_reference(reference_dir / name) for name in names}
    written = []
    for dataset in dict.fromkeys(run.config.data.name for run in plan.runs):
        lines = comparison_rows(table, plan.runs, rows, references, dataset)
        ours = {line["method"] for line in lines}
        unassigned = [
            {**row, "_file": name}
            for name in names
            for row in references[name]
            if row["dataset"] == dataset
            and (row.get("eval_dataset") or dataset) == dataset
            and row["method"].startswith("a-infonce")
            and row["scheme"] in SCHEME_ORDER
            and row["attack"] in ATTACKS
            and row["method"] not in ours
        ]
        stem = reports_dir / f"reproduce_{table.name}_{dataset}"
        protocol = plan.base.finetune.protocol
        written.append(
            write_atomic(
                stem.with_suffix(".md"),
                comparison_markdown(table, dataset, lines, plan.base.preset, protocol, unassigned),
            )
        )
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COMPARISON_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**line, "protocol": protocol} for line in lines)
        written.append(write_atomic(stem.with_suffix(".csv"), buffer.getvalue()))
    return written
