"""DDP under torchrun: W processes share each pretraining step, rank 0 alone writes.

``torchrun --nproc_per_node=W $(which bench) pretrain|run ...`` starts W copies of the command.
Each builds the same plan; rank 0 runs it as one process would (store, finetuning, evaluation,
report), and whenever it pretrains a run it tells the other ranks, which join that run's
pretraining (``follow``) and write nothing.
The collectives of a step are ``bench.engine.collective``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from bench.engine import collective, progress
from bench.engine.device import resolve_device
from bench.errors import ConfigError
from bench.runs.pipeline import DataCache, run_plan
from bench.runs.plan import build_plan
from bench.runs.stages import give_inputs
from bench.runs.train import pretrain
from bench.store.results import ResultsStore


def plan_for_world(plan: Any, request: Any, world: int) -> Any:
    """The plan under W processes: ``pretrain.shards`` defaults to W for every run whose published
    settings and the user leave it unset, so the run id (and the encoder) are those of one process
    with ``--set pretrain.shards=W``; one run at a time (``jobs`` 1).

    The plan is built again with the override (same request, so the same runs in the same order:
    seeds × datasets × methods, teachers first) and each run whose shards were unset is taken from it."""
    if plan.base.jobs > 1:
        raise ConfigError(
            f"jobs={plan.base.jobs} is invalid under torchrun ({world} processes share each run): allowed 0 or 1"
        )
    widened = plan
    if "pretrain.shards" not in request.overrides:
        widened = build_plan(
            dataclasses.replace(request, overrides={**request.overrides, "pretrain.shards": str(world)})
        )
    runs = tuple(
        wide if "shards" not in run.published_row().pretrain else run
        for run, wide in zip(plan.runs, widened.runs, strict=True)
    )
    ids = {run.run_id for run in runs}
    for run in runs:
        for name, upstream in run.upstream.items():
            if upstream not in ids:
                raise ConfigError(
                    f"pretrain.shards is unset under torchrun ({world} processes) but run {run.run_id} "
                    f"publishes its own and its {name} does not: allowed --set pretrain.shards=N"
                )
    return dataclasses.replace(plan, base=dataclasses.replace(plan.base, jobs=1), runs=runs)


def lead(plan: Any) -> list[Any]:
    """Rank 0: the plan as one process runs it; ``bench.runs.train.pretrain`` calls the others in."""
    outcomes = run_plan(plan)
    collective.active().broadcast_object(None)  # done: the others return
    return outcomes


def follow(plan: Any) -> None:
    """Ranks > 0: join each pretraining rank 0 announces (same run, same data, same model), write nothing."""
    progress.set_quiet(True)
    device = resolve_device(plan.base.device)
    store, cache = ResultsStore(plan.results_dir), DataCache(device)
    runs = {run.run_id: run for run in plan.runs}
    while (message := collective.active().broadcast_object()) is not None:
        run = runs[message["run_id"]]
        torch.manual_seed(run.config.seed)
        data = cache.get(run.config.data.name, run.config)
        method = run.method_class(run.params)
        give_inputs(method, run, store)  # rank 0 wrote a teacher's encoder before its student's pretraining started
        model = method.build_model(run.config.model.arch, data.channels)
        pretrain(method, model, data.x_train, run.config, store.run(run.run_id), device, resume=message["resume"])
