"""The flags of ``run``-like commands turned into one ``RunRequest`` (the plan's input)."""

from __future__ import annotations

import argparse

from bench.config import ConfigError
from bench.runs.plan import RunRequest
from bench.runs.tracking import resolve_track

SHORT_FLAGS = {  # flag dest → dotted config field
    "dataset": "data.name",
    "eval_dataset": "data.eval_name",
    "data_dir": "data.data_dir",
    "image_size": "data.image_size",
    "arch": "model.arch",
    "seed": "seed",
    "device": "device",
    "jobs": "jobs",
    "epochs": "pretrain.epochs",
    "batch_size": "pretrain.batch_size",
    "lr": "pretrain.lr",
    "optimizer": "pretrain.optimizer",
    "finetune_epochs": "finetune.epochs",
    "schemes": "finetune.schemes",
    "epsilon": "evaluate.epsilon",
    "step_size": "evaluate.step_size",
    "train_epsilon": "attack.epsilon",
    "train_steps": "attack.steps",
    "attacks": "evaluate.attacks",
    "n_eval": "evaluate.n_eval",
    "results_dir": "results_dir",
    "reports_dir": "reports_dir",
    "protocol": "finetune.protocol",
}


def _split_assignment(text: str, flag: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"{flag} {text!r} is invalid: allowed form KEY=VALUE")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def build_request(args: argparse.Namespace, methods: tuple[str, ...]):
    overrides: dict[str, str] = {}
    for dest, dotted in SHORT_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            overrides[dotted] = value
    if getattr(args, "download", False):
        overrides["data.download"] = "true"
    if getattr(args, "compile", False):
        overrides["pretrain.compile"] = "true"
    for item in args.set:
        key, value = _split_assignment(item, "--set")
        overrides[key] = value
    method_params: dict[str, dict[str, str]] = {}
    for item in args.param:
        key, value = _split_assignment(item, "--param")
        scope, _, name = key.rpartition(":")
        method_params.setdefault(scope or "*", {})[name] = value
    return RunRequest(
        preset=args.preset,
        overrides=overrides,
        method_params=method_params,
        methods=methods,
        force=getattr(args, "force", False),
        resume=getattr(args, "resume", False),
        seeds=tuple(getattr(args, "seeds", None) or ()),
        datasets=tuple(getattr(args, "datasets", None) or ()),
        track=resolve_track(getattr(args, "track", None)),
        post=getattr(args, "post", None) or "",
    )


def selected_methods(args: argparse.Namespace) -> tuple[str, ...]:
    """``--methods`` (space- or comma-separated); ``--post`` is the request's own option (``RunRequest.post``)."""
    return tuple(m for m in ",".join(args.methods).split(",") if m)
