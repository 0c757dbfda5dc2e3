"""Hand-written results stores for the report tests (no training): every number is known by hand.

Used by ``test_report.py`` (assertions on content) and ``test_report_golden.py`` (byte-for-byte
comparison with the reports the code wrote when the golden files were made).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from bench.store.rows import COLUMNS

EPS_SMOKE, EPS_PAPER = 0.1, 0.0313725
REPO = Path(__file__).resolve().parent.parent
REPO_REFERENCE = REPO / "results" / "reference"
GOLDEN = Path(__file__).resolve().parent / "data" / "report_golden"
SMOKE_STORE = GOLDEN / "smoke_store"  # a copy of a real `bench run --methods all` smoke store (13 methods, 1 seed)
# The method order the golden files were written with (the report's own list before it took the caller's)
GOLDEN_ORDER = (
    "simclr",
    "acl",
    "acl-ip",
    "acl-hn",
    "acl-iphn",
    "rocl",
    "rocl-ip",
    "rocl-hn",
    "rocl-iphn",
    "advcl",
    "advcl-ip",
    "advcl-hn",
    "advcl-iphn",
)


def row(
    run_id,
    method,
    scheme,
    attack,
    value,
    *,
    seed=0,
    preset="smoke",
    dataset="digits",
    epsilon=EPS_SMOKE,
    metric="accuracy",
    flags="",
    config_hash="hash-a",
    wall_s=1.5,
    timestamp="2025-01-01T00:00:00+00:00",
    protocol="unified",
):
    return {
        "run_id": run_id,
        "timestamp": timestamp,
        "preset": preset,
        "method": method,
        "dataset": dataset,
        "eval_dataset": dataset,
        "scheme": scheme,
        "attack": attack,
        "metric": metric,
        "value": value,
        "epsilon": epsilon,
        "n_eval": 256,
        "seed": seed,
        "pretrain_epochs": 2,
        "finetune_epochs": 1,
        "config_hash": config_hash,
        "code_version": "0.1.0+abc",
        "torch_version": "2.4",
        "device": "cpu",
        "wall_s": wall_s,
        "flags": flags,
        "protocol": protocol,
    }


def synthetic_rows() -> list[dict]:
    """Two smoke tables (ε 0.1 and 0.05), a best-epoch row, an ε-curve row, a suspect cell, and one
    CIFAR-10 paper-preset run for the paper table."""
    smoke = [
        row("acl-s0", "acl", "SLF", "clean", 90.0),
        row("acl-s1", "acl", "SLF", "clean", 92.0, seed=1),
        row("acl-s0", "acl", "SLF", "pgd20", 40.0),
        row("acl-s1", "acl", "SLF", "pgd20", 42.0, seed=1),
        row("acl-s0", "acl", "AFF", "clean", 88.0),
        row("acl-s0", "acl", "SLF", "pgd20", 43.5, metric="accuracy_best_epoch"),
        row("acl-s0", "acl", "SLF", "pgd20", 61.0, epsilon=0.05, metric="accuracy_vs_epsilon"),
        row("rocl-s0", "rocl", "SLF", "clean", 85.0, config_hash="hash-b"),
        row("rocl-s0", "rocl", "SLF", "pgd20", 45.0, flags="suspect:aa>pgd20", config_hash="hash-b"),
        row("rocl-s0", "rocl", "SLF", "autoattack", 47.0, flags="suspect:aa>pgd20", config_hash="hash-b"),
        row("rocl-s0", "rocl", "SLF", "apgd-ce", 46.0, config_hash="hash-b"),
        row("simclr-s0", "simclr", "SLF", "pgd20", 5.0, epsilon=0.05),  # another budget: its own table
    ]
    paper = {"preset": "paper", "dataset": "cifar10", "epsilon": EPS_PAPER, "config_hash": "hash-c"}
    cifar = [
        row("advcl-c10", "advcl", "SLF", "clean", 81.85, **paper),
        row("advcl-c10", "advcl", "SLF", "pgd20", 50.0, **paper),
        row("advcl-c10", "advcl", "SLF", "autoattack", 44.0, **paper),
    ]
    return smoke + cifar


def configuration_rows() -> list[dict]:
    """Same seed, different configs (one table row each); seeds of one config (mean ± std)."""
    return [
        row("a0", "acl", "SLF", "clean", 80.0, config_hash="h1"),
        row("a1", "acl", "SLF", "clean", 60.0, config_hash="h2"),
        row("a2", "acl", "SLF", "clean", 64.0, config_hash="h2", seed=1),
        row("r0", "rocl", "SLF", "clean", 70.0, config_hash="h3"),
    ]


def supervised_rows() -> list[dict]:
    return [
        row("a0", "acl", "SLF", "clean", 80.0),
        row("rb", "robustbench:Carmon2019", "AT", "clean", 89.7),
        row("rb", "robustbench:Carmon2019", "AT", "pgd20", 62.0),
    ]


def write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_store(root: Path, rows: list[dict]) -> Path:
    """``root/results/results.csv`` plus loss histories for acl-s0 and rocl-s0; returns the CSV path."""
    results_csv = write_csv(root / "results" / "results.csv", rows)
    for run_id, losses in (("acl-s0", [4.0, 3.5, 3.1, 2.9]), ("rocl-s0", [5.0, 4.2, 3.9, 3.0])):
        run_dir = root / "results" / "runs" / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(f'{{"method": "{run_id.split("-")[0]}"}}')
        lines = ["epoch,step,loss,lr,acc_proxy"] + [f"{i // 2},{i},{loss},0.1,0.5" for i, loss in enumerate(losses)]
        (run_dir / "pretrain_history.csv").write_text("\n".join(lines) + "\n")
    return results_csv


def write_sanity(runs_dir: Path, run_id: str, checks: dict, scheme: str = "SLF") -> Path:
    run_dir = runs_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f"sanity_{scheme}.json"
    path.write_text(json.dumps(checks))
    return path


def write_reference(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "author_quoted.csv").write_text(
        "method,dataset,eval_dataset,scheme,attack,metric,value,source,note\n"
        "advcl,cifar10,cifar10,SLF,clean,accuracy,80.85,https://example.org/advcl,quoted\n"
        "advcl,cifar10,cifar10,SLF,pgd20,accuracy,50.45,https://example.org/advcl,quoted\n"
    )
    (directory / "robustssl_leaderboard.csv").write_text(
        "method,dataset,eval_dataset,scheme,attack,metric,value,source,note\n"
        "advcl,cifar10,cifar10,SLF,clean,accuracy,82.36,https://robustssl.github.io/,leaderboard\n"
        "advcl,cifar10,cifar10,SLF,autoattack,accuracy,43.18,https://robustssl.github.io/,leaderboard\n"
        "rocl,cifar100,cifar100,SLF,clean,accuracy,42.93,https://robustssl.github.io/,leaderboard\n"
    )
    return directory


# --------------------------------------------------------------------------- golden cases


def golden_synthetic(root: Path) -> dict:
    results_csv = write_store(root, synthetic_rows())
    runs = root / "results" / "runs"
    write_sanity(
        runs,
        "acl-s0",
        {
            "order": {"passed": True, "detail": "clean 90.00 %, pgd20 40.00 %"},
            "eps0": {"passed": False, "detail": "ε=0 88.00 %, clean 90.00 %"},
        },
    )
    write_sanity(runs, "simclr-s0", {"order": {"passed": True, "detail": "ok | fine"}})
    return {"results_csv": results_csv, "runs_dir": runs, "reference_dir": write_reference(root / "reference")}


def golden_configurations(root: Path) -> dict:
    return {
        "results_csv": write_store(root, configuration_rows()),
        "runs_dir": root / "results" / "runs",
        "reference_dir": None,
    }


def golden_supervised(root: Path) -> dict:
    return {
        "results_csv": write_store(root, supervised_rows()),
        "runs_dir": root / "results" / "runs",
        "reference_dir": None,
    }


def edge_rows() -> list[dict]:
    """What the other stores lack: clean rows without ε (they join every table of their data and preset,
    or make one of ε unspecified), rows without a seed (one per run), a rerun of a seed (the later row
    wins), non-suspect flags, an unknown n_eval, a metric no table shows."""
    return [
        row("a0", "acl", "SLF", "clean", 70.0, epsilon=""),
        row("a0", "acl", "SLF", "pgd20", 30.0),
        row("a0", "acl", "SLF", "pgd20", 20.0, epsilon=0.05, flags="note:short-run"),
        row("a0b", "acl", "SLF", "pgd20", 34.0, timestamp="2025-02-01T00:00:00+00:00"),  # seed 0 rerun
        row("n1", "rocl", "ALF", "clean", 60.0, seed=""),
        row("n2", "rocl", "ALF", "clean", 64.0, seed=""),
        row("n1", "rocl", "ALF", "autoattack", 25.0, seed="", flags="suspect:order;note:x"),
        row("s0", "simclr", "AFF", "clean", 90.0, dataset="stl10", epsilon=""),
        row("s0", "simclr", "AFF", "clean", 1.0, metric="loss"),
    ] + [{**row("r0", "rocl", "SLF", "clean", 80.0), "n_eval": ""}]


def golden_edge(root: Path) -> dict:
    return {"results_csv": write_store(root, edge_rows()), "runs_dir": root / "results" / "runs", "reference_dir": None}


def golden_smoke(root: Path) -> dict:
    """The real smoke store (copied), with the paper table forced on to show the reference-only sections."""
    shutil.copytree(SMOKE_STORE, root / "results")
    return {
        "results_csv": root / "results" / "results.csv",
        "runs_dir": root / "results" / "runs",
        "reference_dir": REPO_REFERENCE,
        "paper": True,
    }


def golden_verdicts(root: Path) -> dict:
    """Both levels of variant-vs-base comparison (issue 20): acl, acl-ip and acl-hn over seeds 0-2 with per-image
    records (method level, HKSJ), rocl and rocl-ip one seed each with records (classifier level, no mark)."""
    import numpy as np

    from bench.store.records import write_record

    generator, rows, runs = np.random.default_rng(20), [], root / "results" / "runs"
    difficulty = {attack: generator.random(300) for attack in ("clean", "pgd20")}  # shared by every run: pairing
    plan = [("acl", 0.40, (0, 1, 2)), ("acl-ip", 0.52, (0, 1, 2)), ("acl-hn", 0.41, (0, 1, 2))]
    plan += [("rocl", 0.35, (0,)), ("rocl-ip", 0.45, (0,))]
    for method, robust, seeds in plan:
        for seed in seeds:
            run_id = f"{method}-s{seed}"
            accuracy = {"clean": 0.85, "pgd20": robust + 0.015 * generator.standard_normal()}  # seed effect
            correct = {  # an image is correct below its run's accuracy, 5 % of them flipped (run noise)
                attack: (difficulty[attack] < accuracy[attack]) ^ (generator.random(300) < 0.05) for attack in accuracy
            }
            (runs / run_id).mkdir(parents=True, exist_ok=True)
            write_record(runs / run_id / "correct_SLF.npz", np.arange(300), correct, {"epsilon": EPS_SMOKE})
            for attack, values in correct.items():
                rows.append(row(run_id, method, "SLF", attack, round(100 * float(values.mean()), 4), seed=seed))
                rows[-1]["n_eval"] = 300
    return {"results_csv": write_store(root, rows), "runs_dir": runs, "reference_dir": None}


GOLDEN_CASES = {
    "verdicts": golden_verdicts,
    "synthetic": golden_synthetic,
    "configurations": golden_configurations,
    "supervised": golden_supervised,
    "edge": golden_edge,
    "smoke": golden_smoke,
}


# --------------------------------------------------------------------------- a full-size table


def full_table_rows(methods=GOLDEN_ORDER, seeds=(0, 1, 2), device="cuda") -> list[dict]:
    """13 methods × 3 seeds on CIFAR-10 at ε = 8/255, every scheme and attack, ε curves at 2–16/255 and
    wall times: the size of a real paper table (numbers are made up but plausible and seeded)."""
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for index, method in enumerate(methods):
        anchor = method == "simclr"
        for seed in seeds:
            run_id = f"{method}-paper-cifar10-s{seed}"
            common = {
                "preset": "paper",
                "dataset": "cifar10",
                "seed": seed,
                "config_hash": f"c{index:02d}",
                "timestamp": "2025-03-01T00:00:00+00:00",
            }
            for scheme, shift in (("SLF", 0.0), ("ALF", -3.0), ("AFF", 2.0)):
                clean = (91.0 if anchor else 80.0 - index * 0.4) + shift + rng.normal(0, 0.6)
                pgd = (0.5 if anchor else 45.0 + index * 0.5) + shift / 2 + rng.normal(0, 0.5)
                wall = 3600.0 * (1.0 + index / 6) if scheme == "SLF" else 1200.0
                for attack, value in (("clean", clean), ("pgd20", pgd), ("autoattack", pgd - 4.0 - rng.random())):
                    out.append(
                        row(
                            run_id,
                            method,
                            scheme,
                            attack,
                            round(max(value, 0.0), 2),
                            epsilon=8 / 255,
                            wall_s=wall,
                            **common,
                        )
                    )
                for k in (2, 4, 12, 16):
                    value = pgd * (1.45 - 0.056 * k) if not anchor else 0.0
                    out.append(
                        row(
                            run_id,
                            method,
                            scheme,
                            "pgd20",
                            round(max(value, 0.0), 2),
                            epsilon=k / 255,
                            metric="accuracy_vs_epsilon",
                            wall_s=None,
                            **common,
                        )
                    )
    for line in out:
        line["device"] = device
    return out


def write_full_store(root: Path, methods=GOLDEN_ORDER, seeds=(0, 1, 2), device="cuda") -> Path:
    """``full_table_rows`` plus, per run, a 200-step loss history and a ``done.json`` with the pretraining time."""
    import numpy as np

    rows = full_table_rows(methods, seeds, device)
    results_csv = write_csv(root / "results" / "results.csv", rows)
    rng = np.random.default_rng(1)
    for index, method in enumerate(methods):
        for seed in seeds:
            run_dir = root / "results" / "runs" / f"{method}-paper-cifar10-s{seed}"
            run_dir.mkdir(parents=True, exist_ok=True)
            steps = np.arange(200)
            offset = rng.normal(0, 0.08)  # seeds differ by more than step noise: the min–max band shows it
            loss = 6.0 + index * 0.1 + offset - 2.0 * (1 - np.exp(-steps / 50)) + rng.normal(0, 0.08, steps.size)
            lines = ["epoch,step,loss,lr"] + [f"{s // 20},{s},{v:.4f},0.5" for s, v in zip(steps, loss)]
            (run_dir / "pretrain_history.csv").write_text("\n".join(lines) + "\n")
            (run_dir / "done.json").write_text(json.dumps({"pretrain_wall_s": 36000.0 * (1 + index / 6) + seed * 60}))
    return results_csv
