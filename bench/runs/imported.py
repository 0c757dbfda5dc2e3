"""The pretraining stage of a run whose encoder is imported, not trained: ``bench evaluate/finetune --checkpoint``.

Such a run is a ``MethodRun`` of the plan like any other, with ``MethodRun.imported`` set
(``bench.runs.external.imported_plan`` builds it). The pipeline (``bench.runs.pipeline.run_method``)
gives it what it gives every run: the lock, the skip check, ``--force``, ``--resume``, the finish
stage and the index. Two stages differ, each by one call into this module:

- pretrain (``bench.runs.stages.pretrain_stage``) calls ``ImportedEncoder.record``: ``config.json`` (the
  run's identity, which keeps the layout external runs always had: the config under ``config``) and
  ``pretrain.json`` (the encoder's pretraining dataset and epochs, as the file or the user gave them);
  nothing is trained and no ``encoder.pt`` is written.
- finetune (``bench.runs.stages.finetune_stage``) calls ``ImportedEncoder.measure``: the file is read
  again (its digest checked against the run's: the run id covers it) and finetuned and evaluated by
  ``bench.evaluation.scheme_run``, as ``bench run``'s encoders are. Reading the file, not a copy in our
  format, keeps what a released format carries that ours does not (a custom normalisation).
  A RobustBench classifier (``--robustbench-model``, scheme ``AT``) needs no finetuning: ``measure``
  evaluates the classifier loaded when the plan was built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.config import RunConfig
from bench.engine.checkpoints import CheckpointError, load_encoder
from bench.engine.data import ImageData
from bench.evaluation.scheme_run import evaluate_ready_classifier, finetune_and_evaluate_scheme
from bench.store.provenance import environment, file_digest, now
from bench.store.results import RunDir
from bench.store.rows import Measurement


@dataclass(frozen=True)
class ImportedEncoder:
    """Where an imported run's encoder comes from and what the rows say about its pretraining."""

    source: str  # the checkpoint's resolved path, or the RobustBench model's name
    format: str  # load_encoder's format (unused for a RobustBench model)
    branch: str | None  # the BN branch asked for (None: the format's default)
    arch: str | None  # the architecture asked for with --set model.arch (None: the file's own)
    digest: str  # file_digest of the checkpoint ('' for a RobustBench model)
    dataset: str  # the rows' pretraining dataset ('unknown' when neither the file nor the user says)
    pretrain_epochs: int | None  # as the file records them (None: unknown)
    protocol_method: str  # whose per-method protocol settings apply (bench.runs.external.protocol_name)
    # a RobustBench classifier, loaded (downloaded) when the plan was built; never pickled into a worker
    classifier: nn.Module | None = field(default=None, compare=False, repr=False)

    def record(self, run: Any, run_dir: RunDir, device: torch.device) -> bool:
        """The pretraining stage of ``run`` (its ``MethodRun``): the records the later stages read; True."""
        env = environment(device)
        run_dir.write_json(
            run_dir.config,
            {
                **run.identity,
                "run_id": run.run_id,
                "config_hash": run.config_hash,
                "schemes": list(run.config.finetune.schemes),  # the finish stage's (AT: not the config's)
                "environment": env,
                "device": str(device),
                "started": now(),
            },
        )
        run_dir.write_json(
            run_dir.pretrain_summary,
            {
                "finished": now(),
                "pretrain_wall_s": None,  # trained elsewhere: unknown (the report leaves its cost out)
                "dataset": self.dataset,
                "pretrain_epochs": self.pretrain_epochs,
                "encoder_from": run.run_id,
                "imported": {"source": self.source, "format": self.format, "file": self.digest},
                "environment": env,
                "threads": torch.get_num_threads(),
            },
        )
        run_dir.set_progress("imported")
        return True

    def load(self) -> tuple[Any, str]:
        """The checkpoint's encoder and the BN branch to finetune, after checking the file is the run's."""
        path = Path(self.source)
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist")
        if file_digest(path) != self.digest:
            raise CheckpointError(
                f"checkpoint {path} changed since its run was planned (sha256 {file_digest(path)}, "
                f"planned {self.digest}): rerun bench evaluate for the new file's run"
            )
        model, info = load_encoder(path, self.format, branch=self.branch, arch=self.arch)
        bn = info.get("branch", "normal")
        return model, bn if bn in model.bn_names() or not model.bn_names() else "normal"

    def measure(
        self, scheme: str, data: ImageData, config: RunConfig, device: torch.device, run_dir: RunDir, label: str
    ) -> list[Measurement]:
        """One scheme's measurements: the checkpoint finetuned and evaluated, or the classifier evaluated (AT)."""
        if self.classifier is not None:
            return evaluate_ready_classifier(self.classifier.to(device), data, config, device, run_dir, scheme)
        model, finetune_bn = self.load()
        return finetune_and_evaluate_scheme(
            model.to(device),
            finetune_bn,
            data,
            config,
            device,
            run_dir,
            scheme,
            label=label,
            method=self.protocol_method,
        )
