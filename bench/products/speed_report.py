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
from bench.products.speed_stats import SCATTER_LIMIT, RatioSummary, mfu, summarise_ratio

CIFAR10_TRAIN, CIFAR10_TEST = 50_000, 10_000
TABLE1_METHODS = ("rocl", "rocl-ip", "rocl-hn", "rocl-iphn", "advcl", "advcl-ip", "advcl-hn", "advcl-iphn")
# Issue 23's GPU targets: (kind, method, fast path, bound, text). Measured only where a GPU ran them.
TARGETS = (
    ("epoch", "advcl-ip", "fast-bf16", 10.0, "one CIFAR-10 epoch of paper-preset advcl-ip in bf16 ≤ 10 s"),
    ("epoch", "advcl-ip", "fast", 25.0, "one CIFAR-10 epoch of paper-preset advcl-ip in TF32 ≤ 25 s"),
    ("table1", "", "fast-bf16", 15.0, "projected ainfonce-table1 CIFAR-10 pretraining in bf16 ≤ 15 GPU-hours"),
)
CEILING_SLACK = 1.05  # a measured ratio this far above its FLOP ceiling is flagged: overhead, not arithmetic
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
    "precision",
    "arch",
    "batch",
    "images_per_s",
    "min_images_per_s",
    "max_images_per_s",
    "gflop_per_image",
    "mfu",
    "ratio",
    "ratio_low",
    "ratio_high",
    "ratio_coverage",
    "flop_ceiling",
    "stability",
    "peak_mb",
    "repeats",
    "rates",
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


@dataclass(frozen=True)
class Ratio:
    """A fast row against a reference row of the same stage, method, arch (and batch when pretraining)."""

    fast: Any
    reference: Any
    summary: RatioSummary
    ceiling: float | None  # reference FLOPs / fast FLOPs per image: the most deduplication can give

    @property
    def above_ceiling(self) -> bool:
        return self.ceiling is not None and self.summary.median > CEILING_SLACK * self.ceiling


def ratios(rows: list) -> dict[tuple[str, str, str, int, str, str], Ratio]:
    """(stage, method, arch, fast batch, fast path, reference path) → the paired ratio of every fast
    path to every reference path (pretraining compares equal batches)."""
    found = {}
    for row in rows:
        if not row.path.startswith("fast"):
            continue
        for other in rows:
            if (
                other.path.startswith("reference")
                and other.stage == row.stage
                and other.method == row.method
                and other.arch == row.arch
                and (row.stage != "pretrain" or other.batch == row.batch)
                and len(other.rates) == len(row.rates) > 0
            ):
                ceiling = None
                if row.flops_per_image and other.flops_per_image:
                    ceiling = other.flops_per_image / row.flops_per_image
                key = (row.stage, row.method, row.arch, row.batch, row.path, other.path)
                found[key] = Ratio(row, other, summarise_ratio(row.rates, other.rates), ceiling)
    return found


def _released_ratio(found: dict, row) -> Ratio | None:
    """A fast row's ratio to the released-precision reference path ('reference')."""
    return found.get((row.stage, row.method, row.arch, row.batch, row.path, "reference"))


def _mfu(row, context: SpeedContext) -> float | None:
    return mfu(row.images_per_s, row.flops_per_image, context.device_name, row.precision_class)


def speed_csv(rows: list, context: SpeedContext) -> str:
    found = ratios(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        ratio = _released_ratio(found, row) if row.path.startswith("fast") else None
        share = _mfu(row, context)
        writer.writerow(
            {
                "stage": row.stage,
                "method": row.method,
                "path": row.path,
                "precision": row.precision,
                "arch": row.arch,
                "batch": row.batch,
                "images_per_s": f"{row.images_per_s:.4g}",
                "min_images_per_s": f"{row.spread[0]:.4g}",
                "max_images_per_s": f"{row.spread[1]:.4g}",
                "gflop_per_image": "" if row.flops_per_image is None else f"{row.flops_per_image / 1e9:.4g}",
                "mfu": "n/a" if share is None else f"{share:.4f}",
                "ratio": "" if ratio is None else f"{ratio.summary.median:.3f}",
                "ratio_low": "" if ratio is None else f"{ratio.summary.low:.3f}",
                "ratio_high": "" if ratio is None else f"{ratio.summary.high:.3f}",
                "ratio_coverage": "" if ratio is None else f"{ratio.summary.coverage:.3f}",
                "flop_ceiling": "" if ratio is None or ratio.ceiling is None else f"{ratio.ceiling:.3f}",
                "stability": "" if ratio is None else ratio.summary.verdict,
                "peak_mb": "" if row.peak_mb is None else f"{row.peak_mb:.0f}",
                "repeats": row.repeats,
                "rates": ";".join(f"{rate:.4g}" for rate in row.rates),
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
    return cls.variant.base or cls.name


def measured_rate(rows: list, name: str, arch: str, path: str = "fast") -> tuple[float | None, str]:
    """The ``path`` pretraining images/s of ``name`` (or of its family's measured member) at ``arch``."""
    candidates = [row for row in rows if row.stage == "pretrain" and row.path == path and row.arch == arch]
    own = [row for row in candidates if row.method == name]
    if own:
        return max(own, key=lambda row: row.batch).images_per_s, name
    relatives = [row for row in candidates if row.method in registry.available() and family(row.method) == family(name)]
    if relatives:
        chosen = max(relatives, key=lambda row: row.batch)
        return chosen.images_per_s, chosen.method
    return None, ""


def pretraining_hours(
    rows: list, names: tuple[str, ...], arch: str, path: str = "fast"
) -> tuple[float | None, list[str]]:
    """Device-hours to pretrain ``names`` with their paper schedules on CIFAR-10 at the rate of ``path``,
    and one line per run."""
    total, lines = 0.0, []
    for name in names:
        epochs, batch = paper_schedule(name)
        rate, source = measured_rate(rows, name, arch, path)
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
    precision = next((row.precision for row in rows if row.stage == "pgd20" and row.path == "fast"), "")
    return (finetune + evaluate + attack) / 3600, f"PGD-20 at {rate:.4g} images/s, {precision}" + (
        f", AutoAttack at {statistics.median(aa):.4g} images/s" if aa else ", AutoAttack not measured"
    )


# --------------------------------------------------------------------------- the report


def _fmt(value: float | None, digits: str = ".4g") -> str:
    return "—" if value is None else format(value, digits)


def target_lines(rows: list, context: SpeedContext, table1: float | None) -> list[str]:
    """Issue 23's GPU targets, each with the precision it assumes; none on CPU (no CPU figure is a target)."""
    if context.device != "cuda":
        return []
    lines = []
    for kind, method, path, bound, text in TARGETS:
        if kind == "epoch":
            epochs = [
                r.settings.get("epoch_s") for r in rows if r.stage == "epoch" and r.method == method and r.path == path
            ]
            value = epochs[0] if epochs else None
            shown = f"{value:.1f} s" if value is not None else "not measured"
        else:
            value = table1
            shown = f"{table1:.1f} h" if table1 is not None else "not measured"
        verdict = "not measured" if value is None else ("met" if value <= bound else "MISSED")
        lines.append(f"- {text}: {shown} — **{verdict}**")
    return lines


def _row_lines(stage_rows: list, found: dict, context: SpeedContext) -> list[str]:
    out = [
        "| method | arch | batch | path | precision | images/s (median) | min–max | GFLOP/image | MFU | peak MB | "
        "settings |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in stage_rows:
        settings = ", ".join(f"{key}={value}" for key, value in row.settings.items())
        share = _mfu(row, context)
        gflop = "—" if row.flops_per_image is None else f"{row.flops_per_image / 1e9:.4g}"
        out.append(
            f"| {row.method} | {row.arch} | {row.batch} | {row.path} | {row.precision} | {row.images_per_s:.4g} | "
            f"{row.spread[0]:.4g}–{row.spread[1]:.4g} | {gflop} | {'n/a' if share is None else f'{share:.1%}'} | "
            f"{_fmt(row.peak_mb, '.0f')} | {settings} |"
        )
    pairs = [ratio for key, ratio in found.items() if key[0] == stage_rows[0].stage]
    if pairs:
        out += [
            "",
            "| method | arch | batch | fast path | reference path | measured fast/reference (median of paired "
            "rounds) | interval [coverage] | FLOP ceiling | rounds | verdict |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for ratio in pairs:
            f, r, summary = ratio.fast, ratio.reference, ratio.summary
            ceiling = "—" if ratio.ceiling is None else f"{ratio.ceiling:.2f}×"
            verdict = summary.verdict + (" (above the FLOP ceiling: overhead, not arithmetic)" * ratio.above_ceiling)
            out.append(
                f"| {f.method} | {f.arch} | {f.batch} | {f.path} ({f.precision}) | {r.path} ({r.precision}) | "
                f"{summary.median:.2f}× | [{summary.low:.2f}, {summary.high:.2f}] [{summary.coverage:.0%}] | "
                f"{ceiling} | {summary.repeats} | {verdict} |"
            )
    return out


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
            "The machine may have been shared while this ran: the paths are timed in alternating rounds and each "
            "ratio is the median of same-round ratios, so load hits both alike; compare ratios, not absolute rates.",
            "",
        ]
    out += [
        "Reference-style = the released pipelines step by step: per-image PIL augmentation in DataLoader "
        "workers, contiguous memory, and what the released attack recomputes at every PGD step (AdvCL: x1, x2, "
        "HFC; RoCL: x2; ACL: weight gradients); `reference` runs at the released precision (fp32 with "
        "PyTorch's default TF32 convolutions on CUDA), `reference-strict` in strict fp32. Fast = the suite's "
        "own step: on-device batched views, each view forwarded once, channels-last and cuDNN autotuning on "
        "CUDA; `fast` at the configured precision (`pretrain.amp` false, as the paper preset), `fast-bf16` "
        "with bf16 autocast. Every row names its precision; on CPU TF32 and bf16 autocast do not apply, so "
        "the TF32 and strict rows coincide and are measured once. The same-precision paths compute the same "
        "loss on the same inputs (tests/test_speed.py, tests/test_speed_exact.py). FLOPs are counted by "
        "torch.utils.flop_counter on one real step of each path; the FLOP ceiling (reference ÷ fast FLOPs) is "
        "the most deduplication can give at equal precision. Interval: order-statistic interval of the "
        f"median of the paired ratios; 'unstable' when its high/low exceeds {SCATTER_LIMIT} after the cap "
        "on rounds. MFU: counted FLOPs × images/s ÷ the device's dense peak at the row's precision (n/a on CPU).",
        "",
    ]
    for stage, title in (
        ("pretrain", "Pretraining step"),
        ("pgd20", "PGD-20 evaluation"),
        ("autoattack", "AutoAttack (standard) evaluation"),
        ("apgd-ce", "AutoAttack's APGD-CE alone (100 iterations on every image)"),
        ("epoch", "One epoch (fast paths)"),
    ):
        stage_rows = [row for row in rows if row.stage == stage]
        if not stage_rows:
            continue
        out += [f"## {title}", "", *_row_lines(stage_rows, found, context), ""]
        notes = sorted({row.note for row in stage_rows if row.note})
        out += [f"Note: {note}." for note in notes] + ([""] if notes else [])
    arch = max((row.arch for row in rows if row.stage == "pretrain"), default="", key=lambda name: name == "resnet18")
    paper = context.preset == "paper" and arch == "resnet18"
    table1 = None
    for path in ("fast", "fast-bf16"):
        measured = [row for row in rows if row.stage == "pretrain" and row.path == path and row.arch == arch]
        if not measured:
            continue
        hours, lines = pretraining_hours(rows, TABLE1_METHODS, arch, path)
        table1 = hours if path == "fast-bf16" else table1
        out += [
            f"## Projections at the `{path}` rate ({measured[0].precision})",
            "",
            f"From the `{path}` throughput measured here ({arch}, this device); **they assume this precision**. "
            "The epochs and batch are each method's `paper` preset on CIFAR-10 (50,000 training images, last "
            "partial batch dropped)."
            + (
                ""
                if paper
                else " **This measurement is not the paper configuration (ResNet-18 at 32 px): the hours below are "
                "this configuration's, not a paper run's.**"
            ),
            "",
            "`bench reproduce ainfonce-table1` (CIFAR-10 pretraining):",
            "",
            "| method | epochs | images/s | device-hours |",
            "|---|---|---|---|",
            *lines,
            "",
            f"Total: **{_fmt(hours, '.1f')} device-hours** ({measured[0].precision}).",
            "",
        ]
        everything, _ = pretraining_hours(rows, tuple(registry.available()), arch, path)
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
        out += ["## Targets (issue 23; measured only on a GPU)", "", *targets, ""]
    return "\n".join(out)


def describe(rows: list) -> dict[str, str]:
    """One line per ratio for the command line: median, interval, FLOP ceiling, verdict."""
    lines = {}
    for (stage, method, arch, batch, fast, reference), ratio in ratios(rows).items():
        summary = ratio.summary
        ceiling = "—" if ratio.ceiling is None else f"{ratio.ceiling:.2f}×"
        lines[f"{stage}:{method}:{arch}:b{batch} {fast} ({ratio.fast.precision}) / {reference}"] = (
            f"{summary.median:.2f}× [{summary.low:.2f}, {summary.high:.2f}] over {summary.repeats} rounds, "
            f"FLOP ceiling {ceiling}, {summary.verdict}"
        )
    return lines
