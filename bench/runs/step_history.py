"""The pretraining loop's logged numbers: read from the device in batches, checked, stored, tracked."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from bench.engine import progress


class StepHistory:
    """Logged numbers of the pending steps, read from the device in one copy (averaged over ranks).

    Each flushed step also goes to the run's tracker (``progress.metrics``; rank 0 only under DDP) with
    its step time and images/s: the wall time since the previous read over the steps read, since a
    step's own time is unknown until the device is waited for (every step on CPU, every 10 on a GPU).
    The trackers' time is left out, and the times stay out of the stored history, which a resumed
    run reproduces bit-exactly."""

    def __init__(self, rows: list[dict[str, Any]], collective, name: str, batch: int):
        self.rows, self.collective, self.name, self.batch = rows, collective, name, batch
        self.pending: list[tuple[dict[str, Any], torch.Tensor, dict[str, Any]]] = []
        self.tracked = collective is None or collective.rank == 0
        self.read_at = time.perf_counter()

    def add(self, row: dict[str, Any], loss: torch.Tensor, logs: dict[str, Any]) -> None:
        self.pending.append((row, loss.detach(), logs))

    def flush(self) -> float | None:
        """Append the pending rows; raise at the first non-finite loss. Returns the last loss."""
        if not self.pending:
            return None
        tensors = []
        for _, loss, logs in self.pending:
            tensors.append(loss.float().reshape(()))
            tensors.extend(value.detach().float().reshape(()) for value in logs.values() if torch.is_tensor(value))
        values = torch.stack(tensors)
        if self.collective is not None:
            values = self.collective.mean(values)
        numbers = iter(values.tolist())
        for row, _, logs in self.pending:
            row["loss"] = next(numbers)
            if not math.isfinite(row["loss"]):
                raise FloatingPointError(
                    f"{self.name}: loss became {row['loss']} at step {row['step']} (lr {row['lr']:.4g})"
                )
            row.update({key: next(numbers) if torch.is_tensor(value) else float(value) for key, value in logs.items()})
            self.rows.append(row)
        step_s = (time.perf_counter() - self.read_at) / len(self.pending)
        if self.tracked:
            for row, _, logs in self.pending:
                numbers = {"loss": row["loss"], "lr": row["lr"], **{key: row[key] for key in logs}}
                numbers.update(step_time_s=step_s, images_per_s=self.batch / step_s if step_s > 0 else 0.0)
                progress.metrics(row["step"], {f"pretrain/{key}": value for key, value in numbers.items()})
        self.pending.clear()
        self.read_at = time.perf_counter()  # the trackers' own time (opening one takes seconds) is not a step's
        return self.rows[-1]["loss"]
