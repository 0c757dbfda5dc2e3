"""``bench speed``'s outputs: ``speed.csv``, ``speed.md``, the targets of issue 10 and the projections.

Projections use the measured fast-path throughput of each method (or of a measured member of
its family: the A-InfoNCE variants change the loss, not the number of forwards) and the epochs
and batch of its ``paper`` preset on CIFAR-10 (50,000 training images). They hold for the
measured configuration only: a smoke-model measurement says nothing about ResNet-18.
"""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass
from typing import Any

from bench.config import paper_preset
from bench.methodkit import registry

CIFAR10_TRAIN, CIFAR10_TEST = 50_000, 10_000
TABLE1_METHODS = ("rocl", "rocl-ip", "rocl-hn", "rocl-iphn", "advcl", "advcl-ip", "advcl-hn", "advcl-iphn")
# Issue 10's targets: (stage or projection, method, device type, bound, "min"imum ratio or "max"imum).
TARGETS = (
    ("ratio", "advcl-ip", "cpu", 1.5, "fast ≥ 1.5× reference-style, smoke model (`bench speed --quick`)"),
    ("ratio", "acl", "cpu", 1.2, "fast ≥ 1.2× reference-style, smoke model (`bench speed --quick`)"),
    ("ratio", "advcl-ip", "cuda", 3.0, "fast ≥ 3× reference-style, ResNet-18 at batch 512"),
    ("epoch", "advcl-ip", "cuda", 25.0, "one CIFAR-10 epoch of paper-preset advcl-ip ≤ 25 s"),
    ("table1", "", "cuda", 36.0, "projected ainfonce-table1 CIFAR-10 pretraining ≤ 36 GPU-hours"),
)
# Finetuning and evaluation per run, in images through PGD-20 (21 forward + input-backward passes):
# SLF a forward per image (≤ 1/21), ALF a PGD-20 per image, AFF TRADES-10 plus a full backward
# (≈ 13/21), 25 epochs of 50,000 images each; evaluation per scheme: PGD-20, the sanity check's
# PGD-40 with a restart (4×) and four more ε-curve points, on 10,000 test images.
FINETUNE_PGD20_SHARE = {"SLF": 1 / 21, "ALF": 1.0, "AFF": 13 / 21}
FINETUNE_EPOCHS = 25
EVAL_PGD20_PASSES = 1 + 4 + 4

CSV_COLUMNS = (
    "stage",
    "method",
    "path",
    "arch",
    "batch",
    "images_per_s",
    "min_images_per_s",
    "max_images_per_s",
    "ratio",
    "peak_mb",
    "repeats",
    "settings",
    "note",
    "device",
    "device_name",
    "preset",
    "image_size",
    "torch",
    "threads",
    "code_version",
    "timestamp",
)


@dataclass
class SpeedContext:
    """Where and how the measurement ran (one value per output file)."""

    device: str
    device_name: str
    preset: str
    image_size: int
    torch: str
    threads: int
    code_version: str
    timestamp: str
    command: str
    shared_machine: bool


def ratios(rows: list) -> dict[tuple[str, str, str, int], float]:
    """(stage, method, arch, batch of the fast row) → fast / reference-style images per second (the
    reference row of the same stage, method and arch; pretraining compares equal batches)."""
    found = {}
    for row in rows:
        if row.path != "fast":
            continue
        reference = next(
            (
                other
                for other in rows
                if other.path == "reference"
                and other.stage == row.stage
                and other.method == row.method
                and other.arch == row.arch
                and (row.stage != "pretrain" or other.batch == row.batch)
            ),
            None,
        )
        if reference is not None and reference.images_per_s > 0:
            found[(row.stage, row.method, row.arch, row.batch)] = row.images_per_s / reference.images_per_s
    return found


def speed_csv(rows: list, context: SpeedContext) -> str:
    found = ratios(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        ratio = found.get((row.stage, row.method, row.arch, row.batch)) if row.path == "fast" else None
        writer.writerow(
            {
                "stage": row.stage,
                "method": row.method,
                "path": row.path,
                "arch": row.arch,
                "batch": row.batch,
                "images_per_s": f"{row.images_per_s:.4g}",
                "min_images_per_s": f"{row.spread[0]:.4g}",
                "max_images_per_s": f"{row.spread[1]:.4g}",
                "ratio": "" if ratio is None else f"{ratio:.3f}",
                "peak_mb": "" if row.peak_mb is None else f"{row.peak_mb:.0f}",
                "repeats": row.repeats,
                "settings": ";".join(f"{key}={value}" for key, value in row.settings.items()),
                "note": row.note,
                "device": context.device,
                "device_name": context.device_name,
                "preset": context.preset,
                "image_size": context.image_size,
                "torch": context.torch,
                "threads": context.threads,
                "code_version": context.code_version,
                "timestamp": context.timestamp,
            }
        )
    return buffer.getvalue()


# --------------------------------------------------------------------------- projections


def paper_schedule(name: str) -> tuple[int, int]:
    """(epochs, batch) of a method's paper preset on CIFAR-10."""
    base = paper_preset().pretrain
    published = registry.get(name).published("paper", "cifar10").pretrain
    return int(published.get("epochs", base.epochs)), int(published.get("batch_size", base.batch_size))


def family(name: str) -> str:
    cls = registry.get(name)
    return cls.base_name or cls.name


def measured_rate(rows: list, name: str, arch: str) -> tuple[float | None, str]:
    """The fast-path pretraining images/s of ``name`` (or of its family's measured member) at ``arch``."""
    candidates = [row for row in rows if row.stage == "pretrain" and row.path == "fast" and row.arch == arch]
    own = [row for row in candidates if row.method == name]
    if own:
        return max(own, key=lambda row: row.batch).images_per_s, name
    relatives = [row for row in candidates if row.method in registry.available() and family(row.method) == family(name)]
    if relatives:
        chosen = max(relatives, key=lambda row: row.batch)
        return chosen.images_per_s, chosen.method
    return None, ""


def pretraining_hours(rows: list, names: tuple[str, ...], arch: str) -> tuple[float | None, list[str]]:
    """Device-hours to pretrain ``names`` with their paper schedules on CIFAR-10, and one line per run."""
    total, lines = 0.0, []
    for name in names:
        epochs, batch = paper_schedule(name)
        rate, source = measured_rate(rows, name, arch)
        images = epochs * (CIFAR10_TRAIN // batch) * batch
        if rate is None:
            lines.append(f"| {name} | {epochs} | — | not measured |")
            total = None
            continue
        hours = images / rate / 3600
        if total is not None:
            total += hours
        via = "" if source == name else f" (rate of {source})"
        lines.append(f"| {name} | {epochs} | {rate:.4g}{via} | {hours:.2f} |")
    return total, lines


def evaluation_hours(rows: list) -> tuple[float | None, str]:
    """Finetuning and evaluation of one run (three schemes), modelled from the measured PGD-20 rate,
    plus AutoAttack at its measured rate (a lower bound: see ``measure_evaluation``)."""
    pgd = [row.images_per_s for row in rows if row.stage == "pgd20" and row.path == "fast"]
    if not pgd:
        return None, "no PGD-20 measurement"
    rate = statistics.median(pgd)
    finetune = sum(FINETUNE_EPOCHS * CIFAR10_TRAIN * share for share in FINETUNE_PGD20_SHARE.values()) / rate
    evaluate = len(FINETUNE_PGD20_SHARE) * EVAL_PGD20_PASSES * CIFAR10_TEST / rate
    aa = [row.images_per_s for row in rows if row.stage == "autoattack" and row.path == "fast"]
    attack = len(FINETUNE_PGD20_SHARE) * CIFAR10_TEST / statistics.median(aa) if aa else 0.0
    return (finetune + evaluate + attack) / 3600, f"PGD-20 at {rate:.4g} images/s" + (
        f", AutoAttack at {statistics.median(aa):.4g} images/s" if aa else ", AutoAttack not measured"
    )


# --------------------------------------------------------------------------- the report


def _fmt(value: float | None, digits: str = ".4g") -> str:
    return "—" if value is None else format(value, digits)


def target_lines(rows: list, context: SpeedContext, table1: float | None) -> list[str]:
    found = ratios(rows)
    lines = []
    for kind, method, device, bound, text in TARGETS:
        if device != context.device:
            continue
        if kind == "ratio":
            values = [ratio for (stage, name, _, _), ratio in found.items() if stage == "pretrain" and name == method]
            value = max(values) if values else None
            met = value is not None and value >= bound
            shown = f"{value:.2f}×" if value is not None else "not measured"
        elif kind == "epoch":
            epochs = [row.settings.get("epoch_s") for row in rows if row.stage == "epoch" and row.method == method]
            value = epochs[0] if epochs else None
            met = value is not None and value <= bound
            shown = f"{value:.1f} s" if value is not None else "not measured"
        else:
            value, met = table1, table1 is not None and table1 <= bound
            shown = f"{table1:.1f} h" if table1 is not None else "not measured"
        verdict = "not measured" if value is None else ("met" if met else "MISSED")
        lines.append(f"- {text}: {shown} — **{verdict}**")
    return lines


def speed_markdown(rows: list, context: SpeedContext) -> str:
    found = ratios(rows)
    out = [
        "# Throughput: fast path vs reference-style path",
        "",
        f"Command: `{context.command}`  ",
        f"Device: {context.device_name} ({context.device}), torch "
        f"{context.torch}, {context.threads} thread(s), code {context.code_version}, {context.timestamp}.",
        "",
    ]
    if context.shared_machine:
        out += [
            "The machine was shared with other engineers while this ran: each figure is the median of "
            "repeats that alternate between the two paths, so load hits both alike; compare ratios, "
            "not absolute rates.",
            "",
        ]
    out += [
        "Reference-style = the released pipelines step by step: per-image PIL augmentation in DataLoader "
        "workers, fp32 without TF32, contiguous memory, and what the released attack recomputes at every "
        "PGD step (AdvCL: x1, x2, HFC; RoCL: x2; ACL: weight gradients). Fast = the suite's own step: "
        "on-device batched views, each view forwarded once, bf16 autocast, channels-last, TF32 and cuDNN "
        "autotuning on CUDA. Both compute the same loss on the same inputs (tests/test_speed.py).",
        "",
    ]
    for stage, title in (
        ("pretrain", "Pretraining step"),
        ("pgd20", "PGD-20 evaluation"),
        ("autoattack", "AutoAttack (standard) evaluation"),
        ("apgd-ce", "AutoAttack's APGD-CE alone (100 iterations on every image)"),
        ("epoch", "One epoch (fast path)"),
    ):
        stage_rows = [row for row in rows if row.stage == stage]
        if not stage_rows:
            continue
        out += [
            f"## {title}",
            "",
            "| method | arch | batch | path | images/s (median) | min–max | peak MB | fast / reference | settings |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in stage_rows:
            ratio = found.get((row.stage, row.method, row.arch, row.batch)) if row.path == "fast" else None
            settings = ", ".join(f"{key}={value}" for key, value in row.settings.items())
            out.append(
                f"| {row.method} | {row.arch} | {row.batch} | {row.path} | {row.images_per_s:.4g} | "
                f"{row.spread[0]:.4g}–{row.spread[1]:.4g} | {_fmt(row.peak_mb, '.0f')} | "
                f"{'' if ratio is None else f'{ratio:.2f}×'} | {settings} |"
            )
        notes = sorted({row.note for row in stage_rows if row.note})
        out += [""] + [f"Note: {note}." for note in notes] + ([""] if notes else [])
    arch = max((row.arch for row in rows if row.stage == "pretrain"), default="", key=lambda name: name == "resnet18")
    table1, table1_lines = pretraining_hours(rows, TABLE1_METHODS, arch)
    out += [
        "## Projections",
        "",
        f"From the fast-path throughput measured here ({arch}, this device); the epochs and batch are each "
        "method's `paper` preset on CIFAR-10 (50,000 training images, last partial batch dropped)."
        + (
            ""
            if context.preset == "paper" and arch == "resnet18"
            else " **This measurement is not the paper configuration (ResNet-18 at 32 px): the hours below are "
            "this configuration's, not a paper run's.**"
        ),
        "",
        "`bench reproduce ainfonce-table1` (CIFAR-10 pretraining):",
        "",
        "| method | epochs | images/s | device-hours |",
        "|---|---|---|---|",
        *table1_lines,
        "",
        f"Total: **{_fmt(table1, '.1f')} device-hours**.",
        "",
    ]
    everything, _ = pretraining_hours(rows, tuple(registry.available()), arch)
    per_run, how = evaluation_hours(rows)
    runs = len(registry.available())
    whole = None if everything is None or per_run is None else everything + runs * per_run
    out += [
        f"A whole `--methods all` paper run ({runs} methods, CIFAR-10): pretraining "
        f"{_fmt(everything, '.1f')} device-hours; finetuning (SLF, ALF, AFF: 25 epochs each) and evaluation "
        f"(PGD-20, the sanity checks' PGD-40 with a restart, the ε curve, AutoAttack, 10,000 test images) "
        f"modelled at {_fmt(per_run, '.2f')} device-hours per run ({how}); total {_fmt(whole, '.1f')} "
        "device-hours. The AutoAttack rate was measured on an untrained classifier whose points fall to "
        "APGD-CE: robust models send about half of them on to APGD-T, FAB-T and Square, so that part is "
        "a lower bound.",
        "",
    ]
    targets = target_lines(rows, context, table1 if context.preset == "paper" else None)
    if targets:
        out += ["## Targets (issue 10)", "", *targets, ""]
    return "\n".join(out)


def describe(rows: list) -> dict[str, Any]:
    """A short summary for the command line: ratios per (stage, method, arch, batch)."""
    return {
        f"{stage}:{method}:{arch}:b{batch}": round(ratio, 3)
        for (stage, method, arch, batch), ratio in ratios(rows).items()
    }
