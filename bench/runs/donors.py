"""Encoder reuse between runs: a run whose pretraining settings and seed equal a finished run's
(the same ``MethodRun.pretrain_key``) loads that run's ``encoder.pt`` instead of training
(``bench.runs.stages.pretrain_stage``); ``dynacl++`` reuses ``dynacl``'s this way.
"""

from __future__ import annotations

import torch

from bench.engine import progress
from bench.store.results import ResultsStore, RunDir


def find_encoder(store: ResultsStore, key: str, exclude: str) -> RunDir | None:
    """A stored run whose finished encoder has pretraining key ``key`` (newest first)."""
    candidates = sorted(
        (run for run in store.run_dirs() if run.encoder.exists()),
        key=lambda run: run.encoder.stat().st_mtime,
        reverse=True,
    )
    for run in candidates:
        if run.run_id == exclude or not run.history.exists():
            continue
        try:
            recorded = run.read_json(run.config).get("pretrain_key")
        except (OSError, ValueError):
            continue
        if recorded == key:
            return run
    return None


def load_donor(model, donor: RunDir, name: str) -> bool:
    """Load another run's finished encoder (weights only); an unreadable one is skipped, said, never fatal."""
    try:
        model.load_state_dict(torch.load(donor.encoder, map_location="cpu", weights_only=True)["model"])
    except Exception as error:  # a damaged donor must not block every run with these settings
        progress.log(
            f"{name}: the encoder of run {donor.run_id} cannot be read ({progress.error_line(error)}); "
            "pretraining instead"
        )
        return False
    progress.log(f"{name}: reusing the encoder of run {donor.run_id} (same pretraining settings and seed)")
    return True
