"""bf16 proven or not used (issue 23): the same runs pretrained in fp32 and with bf16 autocast, compared.

One method per family (default acl, rocl, advcl) on the embedded digits (real data the GPU machine has
without a download) is pretrained twice with the same seed, once at the preset's precision
(``pretrain.amp`` false: fp32, with TF32 convolutions on CUDA as ``pretrain.tf32`` true leaves them)
and once with ``pretrain.amp`` true (bf16 autocast of the model's calls), then SLF-finetuned and
evaluated in fp32 with the same seed. Reported per method:

- clean and PGD-20 accuracy of both, paired image by image with the suite's classifier-level test
  (``bench.products.compare.compare_runs``: Newcombe's interval, exact McNemar, the minimum detectable
  difference);
- the per-step pretraining loss of both (largest and mean relative difference, first and last step);
- adversary agreement: one training step from the same weights, batch and random draws in fp32 and
  in bf16, every PGD sign step recorded (``bench.engine.attacks.recording_sign_steps``); the share of
  sign entries the two agree on, per PGD step (the first step of each attack starts from the same
  point, later ones from iterates that may already differ), at the initial and at the fp32-trained weights.

Verdict: bf16 passes when no method's clean or PGD-20 accuracy differs detectably (McNemar p >= 0.05).
It says nothing beyond these settings; the paper preset keeps ``pretrain.amp`` false until a GPU run
of this check has passed and been recorded in docs/speed.md.

    python scripts/precision_check.py --out DIR                      # GPU: ResNet-18 at 32 px (a few minutes)
    python scripts/precision_check.py --out DIR --tiny --device cpu  # the code path on CPU (tests)

On CPU, bf16 autocast is switched on inside ``bench.engine.attacks.cpu_autocast`` (off by default).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import dataclasses
import json
import sys
from pathlib import Path

import torch

from bench.cli.app import build_parser, main
from bench.cli.commands import build_request
from bench.engine.attacks import cpu_autocast, recording_sign_steps
from bench.engine.data import load_dataset
from bench.engine.device import resolve_device
from bench.products.compare import compare_runs
from bench.products.speed import PathRun, build_method
from bench.runs.plan import build_plan
from bench.store.atomic import write_atomic
from bench.store.results import ResultsStore

ARMS = (("fp32", False), ("bf16", True))
REAL = {"arch": "resnet18", "image_size": 32, "epochs": 15, "batch": 256, "finetune_epochs": 10, "steps": 5}
TINY = {"arch": "small_cnn", "image_size": 8, "epochs": 1, "batch": 256, "finetune_epochs": 1, "steps": 1}


def run_arguments(args: argparse.Namespace, size: dict, amp: bool, folder: Path) -> list[str]:
    """``bench run`` arguments of one arm: smoke preset on digits, the given model and lengths, SLF only."""
    settings = {
        "model.arch": size["arch"],
        "data.image_size": size["image_size"],
        "pretrain.epochs": size["epochs"],
        "pretrain.batch_size": size["batch"],
        "pretrain.amp": str(amp).lower(),
        "attack.steps": size["steps"],
        "finetune.schemes": "SLF",
        "finetune.epochs": size["finetune_epochs"],
        "finetune.milestones": ",".join(str(m) for m in (size["finetune_epochs"],)),
        "evaluate.attacks": "clean,pgd20",
        "evaluate.corruptions": "none",
        "evaluate.n_eval": args.n_eval,
    }
    argv = ["run", "--preset", "smoke", "--methods", *args.methods, "--device", args.device, "--jobs", "1"]
    argv += [
        "--seed",
        str(args.seed),
        "--results-dir",
        str(folder / "results"),
        "--reports-dir",
        str(folder / "reports"),
    ]
    for key, value in settings.items():
        argv += ["--set", f"{key}={value}"]
    return argv + ["--quiet", "--no-report"]  # the check compares the stores; the report is not read


def runs_by_method(folder: Path) -> dict[str, object]:
    found = {}
    for run in ResultsStore(folder / "results").run_dirs():
        found[json.loads(run.config.read_text())["method"]] = run
    return found


def loss_history(run) -> list[float]:
    with open(run.history, newline="") as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


def loss_comparison(base: list[float], variant: list[float]) -> dict[str, float]:
    """Relative per-step differences of two loss curves of equal length."""
    if len(base) != len(variant) or not base:
        raise ValueError(f"loss curves of {len(base)} and {len(variant)} steps are invalid: allowed equal, non-empty")
    relative = [abs(v - b) / max(abs(b), 1e-12) for b, v in zip(base, variant, strict=True)]
    return {
        "steps": len(base),
        "first_fp32": base[0],
        "first_bf16": variant[0],
        "last_fp32": base[-1],
        "last_bf16": variant[-1],
        "max_relative": max(relative),
        "mean_relative": sum(relative) / len(relative),
    }


def sign_agreement(base: list[torch.Tensor], variant: list[torch.Tensor]) -> list[float]:
    """Per recorded PGD step, the share of sign entries two runs of the same step agree on."""
    if len(base) != len(variant):
        raise ValueError(f"{len(base)} and {len(variant)} PGD steps are invalid: allowed the same step count")
    return [float((b == v).float().mean()) for b, v in zip(base, variant, strict=True)]


def adversary_agreement(run, data: torch.Tensor, device: torch.device, folder: Path, weights) -> list[float]:
    """One training step in fp32 and in bf16 from the same weights, batch and draws; sign agreement per PGD step."""
    method, model = build_method(run, data.shape[1], folder, data, device)
    if weights is not None:
        model.load_state_dict(weights)
    signs = {}
    for name, amp in ARMS:
        settings = dataclasses.replace(run.config.pretrain, amp=amp)
        path = PathRun(name, copy.deepcopy(method), copy.deepcopy(model), settings, run.config, data, device)
        bf16_on_cpu = cpu_autocast() if amp and device.type == "cpu" else contextlib.nullcontext()
        with recording_sign_steps() as recorded, bf16_on_cpu:
            path.run(1)
        signs[name] = recorded
    return sign_agreement(signs["fp32"], signs["bf16"])


def _fmt_agreement(values: list[float]) -> str:
    if not values:
        return "no PGD step"
    return (
        f"mean {sum(values) / len(values):.4f}, first {values[0]:.4f}, min {min(values):.4f} over {len(values)} steps"
    )


def check(args: argparse.Namespace) -> dict:
    size = TINY if args.tiny else REAL
    out = Path(args.out)
    device = resolve_device(args.device)
    for name, amp in ARMS:
        bf16_on_cpu = cpu_autocast() if amp and device.type == "cpu" else contextlib.nullcontext()
        with bf16_on_cpu:
            status = main(run_arguments(args, size, amp, out / name))
        if status != 0:
            raise SystemExit(f"precision check: the {name} runs failed (exit {status}); see the output above")
    arms = {name: runs_by_method(out / name) for name, _ in ARMS}
    plan = build_plan(
        build_request(build_parser().parse_args(run_arguments(args, size, False, out / "fp32")), tuple(args.methods))
    )
    data = load_dataset("digits", "~/data", False, size["image_size"]).x_train.to(device)
    report: dict = {"device": str(device), "settings": size, "seed": args.seed, "methods": {}}
    for run in plan.runs:
        base, variant = arms["fp32"][run.method], arms["bf16"][run.method]
        accuracy = []
        for result in compare_runs(base, variant, ["SLF"], ["clean", "pgd20"], ("fp32", "bf16")):
            c = result.comparison
            accuracy.append(
                {
                    "attack": result.attack,
                    "n": c.n,
                    "fp32": c.base,
                    "bf16": c.variant,
                    "difference": c.difference,
                    "interval": [c.low, c.high],
                    "p_value": c.p_value,
                    "discordant": result.discordant,
                    "mdd_points": result.detectable,
                }
            )
        trained = torch.load(base.encoder, map_location=device, weights_only=True)["model"]
        report["methods"][run.method] = {
            "accuracy": accuracy,
            "loss": loss_comparison(loss_history(base), loss_history(variant)),
            "agreement_initial": adversary_agreement(run, data, device, out, None),
            "agreement_trained": adversary_agreement(run, data, device, out, trained),
        }
    failed = [
        f"{method} {row['attack']}"
        for method, entry in report["methods"].items()
        for row in entry["accuracy"]
        if row["p_value"] < 0.05
    ]
    report["verdict"] = "bf16 FAILS: " + ", ".join(failed) if failed else "bf16 passes (no detectable difference)"
    return report


def markdown(report: dict) -> str:
    size = report["settings"]
    lines = [
        "# Precision check: fp32 vs bf16 autocast pretraining (issue 23)",
        "",
        f"Device {report['device']}; digits at {size['image_size']} px, {size['arch']}, {size['epochs']} pretraining "
        f"epochs (batch {size['batch']}, PGD-{size['steps']}), SLF {size['finetune_epochs']} epochs, seed "
        f"{report['seed']}. fp32 = `pretrain.amp` false (TF32 convolutions on CUDA, the preset's default); "
        "bf16 = `pretrain.amp` true. Finetuning and evaluation in fp32 for both.",
        "",
        "| method | attack | n | fp32 % | bf16 % | Δ points [95 % CI] | McNemar p | MDD | loss max rel. Δ | "
        "sign agreement (initial) | sign agreement (trained) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, entry in report["methods"].items():
        for row in entry["accuracy"]:
            low, high = row["interval"]
            mdd = "—" if row["mdd_points"] is None else f"{row['mdd_points']:.1f}"
            lines.append(
                f"| {method} | {row['attack']} | {row['n']} | {row['fp32']:.1f} | {row['bf16']:.1f} | "
                f"{row['difference']:+.1f} [{low:+.1f}, {high:+.1f}] | {row['p_value']:.3g} | {mdd} | "
                f"{entry['loss']['max_relative']:.3g} | {_fmt_agreement(entry['agreement_initial'])} | "
                f"{_fmt_agreement(entry['agreement_trained'])} |"
            )
    return "\n".join([*lines, "", f"**Verdict: {report['verdict']}.**", ""])


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (runs, precision.json, precision.md)")
    parser.add_argument("--methods", nargs="+", default=["acl", "rocl", "advcl"], help="one per family")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-eval", type=int, default=0, help="test images (0 = all 359 digits test images)")
    parser.add_argument("--tiny", action="store_true", help="small_cnn at 8 px, 1 epoch, PGD-1: the CPU test")
    return parser.parse_args(argv)


def run(argv: list[str]) -> dict:
    args = parse(argv)
    report = check(args)
    out = Path(args.out)
    write_atomic(out / "precision.json", json.dumps(report, indent=2, default=float))
    text = markdown(report)
    write_atomic(out / "precision.md", text)
    print(text)
    return report


if __name__ == "__main__":
    result = run(sys.argv[1:])
    sys.exit(0 if result["verdict"].startswith("bf16 passes") else 1)
