"""The library trackers behind ``bench.runs.tracking``'s fan-out: TensorBoard, MLflow, Weights & Biases,
and the interface they share (``Tracker``). Each library is imported when its tracker is built (they
are optional and heavy: ``pip install -e ".[track]"``); a missing one is the fan-out's one line.

Where each writes (the libraries' own settings are respected):

- tensorboard: ``<run dir>/tensorboard/`` (``tensorboard --logdir results/runs``); the report's figures
  as images under ``<reports dir>/tensorboard/``. The config as hyperparameters (the HParams tab) and
  as JSON text.
- mlflow: the tracking server or store of ``MLFLOW_TRACKING_URI`` (MLflow's default otherwise), in the
  experiment ``MLFLOW_EXPERIMENT_NAME`` (default ``acl-bench``); one MLflow run per attempt of a run,
  tagged ``bench.run_id``. Metrics are sent in batches (at most every 10 s while a run trains).
- wandb: the project ``WANDB_PROJECT`` (default ``acl-bench``), online or ``WANDB_MODE=offline`` (files
  under ``WANDB_DIR``, ``wandb sync`` later). Each ``<stage>/`` has its own step axis (``<stage>/step``),
  since W&B's own step must only grow and finetuning starts at step 0 again.
"""

from __future__ import annotations

import json
import netrc
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import ConfigError
from bench.store.rows import ResultRow

PROJECT = "acl-bench"  # the MLflow experiment and W&B project unless their environment variables say otherwise
MLFLOW_BATCH = 500  # metrics per MLflow request (its limit is 1000)
MLFLOW_EVERY_S = 10.0  # at most this long between MLflow requests while steps are logged
# MLflow retries a request 7 times with doubling waits (minutes when its server is down): a tracker
# must not hold a run that long, so unless the user set them, 2 retries 1 s and 2 s apart, 10 s timeouts.
MLFLOW_PATIENCE = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


@dataclass(frozen=True)
class Target:
    """What a tracker records and where: a run (``kind`` 'run', named by its run id, grouped by its
    config hash so the seeds of one configuration sit together) or a report (``kind`` 'report')."""

    name: str
    kind: str
    group: str
    directory: Path  # the run directory; the reports directory for a report


class Tracker:
    """One tracking destination. Every method is a no-op here; a backend overrides what it records."""

    name = "none"

    def start(self, config: dict[str, Any]) -> None:
        """Open the destination and record the resolved config as hyperparameters."""

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        """One step's numbers, keys ``<stage>/<name>`` (``pretrain/loss``, ``finetune/SLF/loss``)."""

    def log_rows(self, rows: list[ResultRow]) -> None:
        """Every result row of the finished run, as a final metric (``row_key``)."""

    def log_artifacts(self, paths: list[Path]) -> None:
        """Files to keep with the tracked run (the report's figures)."""

    def finish(self, status: str = "FINISHED") -> None:
        """Close the destination; ``status`` FINISHED, FAILED or KILLED."""


def row_key(row: ResultRow) -> str:
    """A row's metric name, unique within a run: ``result/<scheme>/<attack>/<metric>``, with the ε for
    the ε curve's points; characters the libraries refuse in names become '_'."""
    key = f"result/{row.scheme}/{row.attack}/{row.metric}"
    if row.metric == "accuracy_vs_epsilon" and row.epsilon is not None:
        key += f"/eps_{row.epsilon:.6g}"
    return re.sub(r"[^\w./ -]", "_", key)


def flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys; lists and None as their JSON text (hyperparameters are scalars)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            out[name] = value
        else:
            out[name] = json.dumps(value, default=str)
    return out


def build_backend(name: str, target: Target) -> Tracker:
    """The library tracker ``name`` for ``target`` (its package imported now)."""
    backends = {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker, "wandb": WandbTracker}
    if name not in backends:
        raise ConfigError(f"tracker {name!r} is invalid: allowed {', '.join(backends)}")
    return backends[name](target)


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, target: Target):
        from torch.utils.tensorboard import SummaryWriter  # deferred: needs the optional tensorboard package

        self.target = target
        self.writer = SummaryWriter(log_dir=str(target.directory / "tensorboard"))

    def start(self, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams  # deferred: needs the optional tensorboard package

        for summary in hparams(flat(config), {}):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("config", f"```\n{json.dumps(config, indent=1, default=str)}\n```")

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def log_rows(self, rows: list[ResultRow]) -> None:
        for row in rows:
            self.writer.add_scalar(row_key(row), row.value, 0)
        self.writer.flush()

    def log_artifacts(self, paths: list[Path]) -> None:
        """PNG figures as images (TensorBoard keeps no files; PDFs are left in the reports directory)."""
        import numpy  # deferred with PIL below: only the report's figures need them
        from PIL import Image  # deferred: matplotlib's dependency, only for the report's figures

        for path in paths:
            if path.suffix == ".png":
                with Image.open(path) as image:
                    self.writer.add_image(path.stem, numpy.asarray(image.convert("RGB")), 0, dataformats="HWC")

    def finish(self, status: str = "FINISHED") -> None:
        self.writer.close()


class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, target: Target):
        for variable, value in MLFLOW_PATIENCE.items():  # the user's own settings win
            os.environ.setdefault(variable, value)
        from mlflow import MlflowClient  # deferred: optional and slow to import (seconds)
        from mlflow.entities import Metric, Param  # deferred: as above

        self.target, self.Metric, self.Param = target, Metric, Param
        self.client = MlflowClient()
        self.run_id = ""
        self.pending: list[Any] = []
        self.sent_at = time.monotonic()

    def _experiment(self) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or PROJECT
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # noqa: BLE001 - another process created it first; the lookup below says if not
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def start(self, config: dict[str, Any]) -> None:
        target = self.target
        tags = {"bench.run_id": target.name, "bench.kind": target.kind, "bench.config_hash": target.group}
        self.run_id = self.client.create_run(self._experiment(), run_name=target.name, tags=tags).info.run_id
        params = [self.Param(key, str(value)) for key, value in flat(config).items()]
        for first in range(0, len(params), 100):  # MLflow takes at most 100 params per request
            self.client.log_batch(self.run_id, params=params[first : first + 100])

    def _metric(self, key: str, value: float, step: int) -> Any:
        return self.Metric(key, float(value), int(time.time() * 1000), step)

    def _send(self) -> None:
        while self.pending:
            batch, self.pending = self.pending[:MLFLOW_BATCH], self.pending[MLFLOW_BATCH:]
            self.client.log_batch(self.run_id, metrics=batch)
        self.sent_at = time.monotonic()

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        self.pending += [self._metric(key, value, step) for key, value in metrics.items()]
        if len(self.pending) >= MLFLOW_BATCH or time.monotonic() - self.sent_at >= MLFLOW_EVERY_S:
            self._send()

    def log_rows(self, rows: list[ResultRow]) -> None:
        self.pending += [self._metric(row_key(row), row.value, 0) for row in rows]
        self._send()

    def log_artifacts(self, paths: list[Path]) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path), artifact_path="figures")

    def finish(self, status: str = "FINISHED") -> None:
        if self.run_id:
            self._send()
            self.client.set_terminated(self.run_id, status)


def _wandb_key_known() -> bool:
    """Whether W&B has an API key without asking (the environment, or ~/.netrc as ``wandb login`` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = re.sub(r"^https?://", "", os.environ.get("WANDB_BASE_URL", "api.wandb.ai")).split("/")[0]
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, target: Target):
        import wandb  # deferred: optional and slow to import

        mode = os.environ.get("WANDB_MODE", "online")
        if mode not in ("offline", "disabled", "dryrun") and sys.stdin.isatty() and not _wandb_key_known():
            # wandb.init would stop the run at a login prompt
            raise RuntimeError("no W&B API key: run `wandb login`, set WANDB_API_KEY, or WANDB_MODE=offline")
        self.wandb, self.target, self.run = wandb, target, None
        self.axes: set[str] = set()

    def start(self, config: dict[str, Any]) -> None:
        target = self.target
        self.run = self.wandb.init(
            project=os.environ.get("WANDB_PROJECT") or PROJECT,
            name=target.name,
            group=target.group,
            job_type=target.kind,
            config=config,
            settings=self.wandb.Settings(console="off", silent=True),  # the run's own output stays untouched
        )

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        by_axis: dict[str, dict[str, float]] = {}
        for key, value in metrics.items():
            by_axis.setdefault(key.rpartition("/")[0] or "step", {})[key] = value
        for axis, values in by_axis.items():
            if axis not in self.axes:
                self.run.define_metric(f"{axis}/step")
                self.run.define_metric(f"{axis}/*", step_metric=f"{axis}/step")
                self.axes.add(axis)
            self.run.log({**values, f"{axis}/step": step})

    def log_rows(self, rows: list[ResultRow]) -> None:
        self.run.summary.update({row_key(row): row.value for row in rows})

    def log_artifacts(self, paths: list[Path]) -> None:
        artifact = self.wandb.Artifact(f"{self.target.kind}-figures", type="figures")
        for path in paths:
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def finish(self, status: str = "FINISHED") -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if status == "FINISHED" else 1)
