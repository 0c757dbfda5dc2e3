"""Live tracking of runs: one interface (``Tracker``), one fan-out that keeps tracking from ever
stopping or changing a run (``FanOut``), and the local default, a JSON-lines log in the run directory.

``bench run --track tensorboard|mlflow|wandb`` (repeatable) adds the library backends
(``bench.runs.tracking_backends``); ``--track none`` turns off the local log too. Each tracked run logs
its resolved config (``MethodRun.to_dict``) as hyperparameters, per step the pretraining loss and its
parts, learning rate, step time and images/s and the finetuning loss and learning rate per scheme
(``progress.metrics``, which the loops call as they advance their bars), then every result row as a
final metric. ``bench run`` also logs its report's figures as artifacts of a separate ``report`` run
(``log_report``): the report covers the whole store, not one run.

Why a fan-out: a tracker is an observer. A missing package, a server that is down or a full disk
costs that backend (one line, ``tracking: mlflow failed (...); the run goes on``, printed even under
``--quiet``) and never the run or its numbers. Backends open at the first number logged, after the
pretraining stage has prepared the run directory (``--force`` clears it, and the files with it).

Where trackers live: in the process that runs the run (a ``--jobs`` worker, rank 0 under DDP: the
other ranks install none). ``bench sweep``'s stage jobs are not tracked (a run's stages are separate
jobs, some in parallel); its stored ``pretrain_history.csv`` and rows are what it leaves.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from bench.choices import TRACKERS as CHOICES  # the CLI's light name table
from bench.engine import progress
from bench.errors import ConfigError
from bench.runs.plan import MethodRun
from bench.runs.tracking_backends import Target, Tracker, build_backend
from bench.store.results import RunDir
from bench.store.rows import ResultRow

__all__ = ["FanOut", "LocalTracker", "Target", "Tracker", "log_report", "resolve_track", "tracked"]

LOCAL, OFF = "local", "none"
BACKENDS = tuple(name for name in CHOICES if name not in (LOCAL, OFF))  # tensorboard, mlflow, wandb


def resolve_track(values: Sequence[str] | None) -> tuple[str, ...]:
    """The trackers of ``--track`` values: the local log, plus each backend named (once, in order);
    ``none`` alone turns every tracker off."""
    values = list(values or ())
    for value in values:
        if value not in CHOICES:
            raise ConfigError(f"--track {value!r} is invalid: allowed {', '.join(CHOICES)}")
    if OFF in values:
        if len(set(values)) > 1:
            raise ConfigError(f"--track none is invalid with {sorted(set(values) - {'none'})}: allowed none alone")
        return ()
    return tuple(dict.fromkeys([LOCAL, *values]))


class LocalTracker(Tracker):
    """The default: ``metrics.jsonl`` in the run directory, one ``{"step", "time", <key>: value}`` line per
    ``log_step``, appended and flushed live (``tail -f`` it). The config and the rows are the run
    directory's own ``config.json`` and ``rows.csv``, so they are not copied here.

    Append-only, so a resumed run appends the steps after its checkpoint again: the last line of a step
    is the one that counts. A kill can tear the last line; the next attempt cuts it off before writing."""

    name = LOCAL

    def __init__(self, path: Path):
        self.path = path
        self.file: IO[str] | None = None

    def start(self, config: dict[str, Any]) -> None:
        if self.path.exists():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                with self.path.open("r+b") as handle:
                    handle.truncate(data.rfind(b"\n") + 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("a", encoding="utf-8")

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        values = {key: value if math.isfinite(value) else None for key, value in metrics.items()}
        self.file.write(json.dumps({"step": step, "time": round(time.time(), 3), **values}) + "\n")
        self.file.flush()

    def finish(self, status: str = "FINISHED") -> None:
        if self.file is not None:
            self.file.close()


def read_local(path: Path) -> list[dict[str, Any]]:
    """The lines of a local log (``metrics.jsonl``), a torn last line left out."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    return [json.loads(line) for line in lines if line.endswith("\n")]


_MISSING: set[str] = set()  # backends whose package failed to import in this process


class FanOut(Tracker):
    """Every chosen tracker behind one ``Tracker``: a backend that raises is dropped with one line and
    the others go on; nothing it raises reaches the run. Backends are built (their package imported) at
    the first call after ``start``, so a run that logs nothing opens nothing."""

    name = "fan-out"

    def __init__(self, factories: dict[str, Callable[[], Tracker]]):
        self.factories = factories
        self.active: dict[str, Tracker] | None = None
        self.config: dict[str, Any] = {}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.factories if self.active is None else self.active)

    def start(self, config: dict[str, Any]) -> None:
        self.config = config

    def _open(self) -> dict[str, Tracker]:
        if self.active is None:
            self.active = {}
            for name, factory in self.factories.items():
                if name in _MISSING:  # said once per process, not once per run
                    continue
                try:
                    backend = factory()
                    backend.start(self.config)
                except Exception as error:  # noqa: BLE001 - any failure of a tracker costs that tracker only
                    if isinstance(error, ImportError):
                        _MISSING.add(name)
                    self._drop(name, error)
                else:
                    self.active[name] = backend
        return self.active

    def _drop(self, name: str, error: BaseException) -> None:
        progress.warn(f"tracking: {name} failed ({progress.error_line(error)}); the run goes on")
        if self.active is not None:
            self.active.pop(name, None)

    def _each(self, call: Callable[[Tracker], None]) -> None:
        for name, backend in list(self._open().items()):
            try:
                call(backend)
            except Exception as error:  # noqa: BLE001 - any failure of a tracker costs that tracker only
                self._drop(name, error)
                try:
                    backend.finish("FAILED")
                except Exception:  # noqa: BLE001, S110 - it already failed once, and was said
                    pass

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        self._each(lambda backend: backend.log_step(step, metrics))

    def log_rows(self, rows: list[ResultRow]) -> None:
        self._each(lambda backend: backend.log_rows(rows))

    def log_artifacts(self, paths: list[Path]) -> None:
        self._each(lambda backend: backend.log_artifacts(paths))

    def finish(self, status: str = "FINISHED") -> None:
        self._each(lambda backend: backend.finish(status))
        self.active = {}


def factories(names: Sequence[str], target: Target, run_dir: RunDir | None = None) -> dict[str, Callable[[], Tracker]]:
    """name → a function building that tracker for ``target`` (the local log needs the run directory)."""
    made: dict[str, Callable[[], Tracker]] = {}
    for name in names:
        if name == LOCAL:
            if run_dir is not None:
                made[name] = lambda: LocalTracker(run_dir.metrics)
        elif name in BACKENDS:
            made[name] = lambda name=name: build_backend(name, target)
        else:
            raise ConfigError(f"tracker {name!r} is invalid: allowed {', '.join(CHOICES[:-1])}")
    return made


@contextmanager
def tracked(names: Sequence[str], run: MethodRun, run_dir: RunDir) -> Iterator[Tracker]:
    """The tracker of one run for the duration of its stages: the loops' ``progress.metrics`` reach it,
    and it is finished with the run's status however the stages end."""
    target = Target(run.run_id, "run", run.config_hash, run_dir.path)
    tracker = FanOut(factories(names, target, run_dir))
    tracker.start(run.to_dict())
    status = "FAILED"
    try:
        with progress.metrics_to(tracker):
            yield tracker
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.finish(status)


def log_report(names: Sequence[str], reports_dir: Path, written: Sequence[Path], config: dict[str, Any]) -> None:
    """The report's figures (PNG and PDF) as artifacts of one ``report`` run per library backend (the
    local log has nothing to add: the figures are in ``reports_dir``)."""
    figures = [Path(path) for path in written if Path(path).suffix in (".png", ".pdf")]
    chosen = [name for name in names if name in BACKENDS]
    if not figures or not chosen:
        return
    tracker = FanOut(factories(chosen, Target("report", "report", "report", Path(reports_dir))))
    tracker.start(config)
    tracker.log_artifacts(figures)
    tracker.finish()
