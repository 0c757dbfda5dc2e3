"""What ``bench speed`` measures and how: the options and rows, peak memory, device-synchronised timing,
alternating timed repeats of several paths, and the evaluation attacks' throughput. ``bench.products.speed``
builds the paths (fast and released-style) of each method and runs the command."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from bench.config import RunConfig
from bench.engine.data import to_float
from bench.engine.models import Classifier, build_contrastive_model
from bench.evaluation.batching import CPU_BATCH, eval_batch_size
from bench.evaluation.evaluate import attack_copy, autoattack_accuracy, pgd_accuracy
from bench.products.speed_stats import precision_label, summarise_ratio

if TYPE_CHECKING:  # a type only: speed builds the paths this module times
    from bench.products.speed import PathRun


@dataclass
class SpeedOptions:
    """What to measure and how often (``bench speed`` flags)."""

    warmup: int = 2  # steps before timing (cuDNN autotuning, compilation, loader start)
    steps: int = 3  # steps per timed repeat
    repeats: int = 3  # timed rounds of every path (at least)
    max_repeats: int = 12  # cap on the rounds while a paired ratio is unstable (speed_stats.SCATTER_LIMIT)
    loader_workers: int = 0  # reference-style DataLoader workers; 0 = min(8, cores)
    eval_images: int = 256  # images of the PGD-20 / AutoAttack measurement (0 = skip evaluation)
    autoattack: str = "standard"  # 'standard', 'apgd-ce' (its first attack: 100 iterations on every image) or ''
    reference: bool = True
    stages: tuple[str, ...] = ("pretrain", "eval", "epoch")  # what to measure (epoch: only for epoch_runs)


@dataclass
class SpeedRow:
    """One measured path: the median throughput and peak memory over the repeats; ``rates`` keeps every
    round's images/s in round order, so the report pairs them with another path's same rounds."""

    stage: str  # pretrain | pgd20 | autoattack | epoch
    method: str
    path: str  # fast | reference
    arch: str
    batch: int
    images_per_s: float
    spread: tuple[float, float]  # min and max over repeats
    peak_mb: float | None
    repeats: int
    settings: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    precision: str = ""  # in words (speed_stats.precision_label)
    rates: tuple[float, ...] = ()
    flops_per_image: float | None = None  # counted on one real step (speed_stats.count_flops)
    precision_class: str = "fp32"  # which peak its MFU is a share of: bf16 | tf32 | fp32


class PeakMemory:
    """Peak memory of a block: CUDA's allocator peak, or on Linux this process's peak resident set
    (VmHWM, reset through /proc/self/clear_refs before the block; DataLoader workers are other
    processes and not counted); None where neither is available. No sampling thread: one would
    contend for the GIL with the step's Python and slow the very thing measured."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb = device, None

    @contextmanager
    def measure(self) -> Iterator[None]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            yield
            torch.cuda.synchronize(self.device)
            self._keep(torch.cuda.max_memory_allocated(self.device) / 2**20)
            return
        reset = _reset_resident_peak()
        yield
        self._keep(_resident_peak_mb() if reset else None)

    def _keep(self, value: float | None) -> None:
        if value is not None:
            self.peak_mb = value if self.peak_mb is None else max(self.peak_mb, value)


def _reset_resident_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _resident_peak_mb() -> float | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[], None], device: torch.device) -> float:
    synchronize(device)
    began = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - began


def fast_reference_pairs(names: list[str]) -> list[tuple[str, str]]:
    """Every (fast…, reference…) pair of path names: the ratios a measurement reports."""
    return [(f, r) for f in names if f.startswith("fast") for r in names if r.startswith("reference")]


def alternate(
    names: list[str], run_once: Callable[[str], int], options: SpeedOptions, device: torch.device
) -> dict[str, tuple[list[float], PeakMemory]]:
    """Timed rounds of every path, forward order then reverse (ref, fast, fast, ref, …), so drift in
    the machine's load hits both alike; at least ``options.repeats`` rounds, more (up to
    ``options.max_repeats``) while any fast/reference paired ratio is unstable. ``run_once(name)``
    runs one repeat of a path and returns the images it processed."""
    results = {name: ([], PeakMemory(device)) for name in names}
    pairs = fast_reference_pairs(names)
    cap = max(options.repeats, options.max_repeats)

    def scattered() -> bool:
        return any(summarise_ratio(results[f][0], results[r][0]).unstable for f, r in pairs)

    rounds = 0
    while rounds < options.repeats or (rounds < cap and scattered()):
        for name in names if rounds % 2 == 0 else names[::-1]:
            rates, memory = results[name]
            with memory.measure():
                images = [0]
                seconds = timed(lambda name=name, images=images: images.__setitem__(0, run_once(name)), device)
            rates.append(images[0] / seconds)
        rounds += 1
    return results


def measure(
    paths: list[PathRun], options: SpeedOptions, device: torch.device
) -> dict[str, tuple[list[float], PeakMemory]]:
    """Warm every path up, then alternate timed repeats between them; images/s of each repeat."""
    by_name = {path.name: path for path in paths}
    for path in paths:
        path.run(options.warmup)

    def run_once(name: str) -> int:
        by_name[name].run(options.steps)
        return options.steps * by_name[name].batch

    return alternate(list(by_name), run_once, options, device)


def summarise(
    stage: str,
    method: str,
    path: str,
    arch: str,
    batch: int,
    rates: list[float],
    memory: PeakMemory,
    settings: dict[str, Any],
    note: str = "",
    **extra: Any,
) -> SpeedRow:
    return SpeedRow(
        stage,
        method,
        path,
        arch,
        batch,
        statistics.median(rates),
        (min(rates), max(rates)),
        memory.peak_mb,
        len(rates),
        settings,
        note,
        rates=tuple(rates),
        **extra,
    )


@contextmanager
def matmul_precision(device: torch.device, tf32: bool) -> Iterator[None]:
    if device.type != "cuda":
        yield
        return
    backends = torch.backends
    saved = (backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32)
    backends.cuda.matmul.allow_tf32 = backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32 = saved


def measure_evaluation(
    config: RunConfig, images: torch.Tensor, options: SpeedOptions, device: torch.device
) -> list[SpeedRow]:
    """PGD-20 and AutoAttack: fast (channels-last copy, bf16 autocast and TF32 on CUDA, the auto batch)
    against reference-style (fp32 contiguous copy, batch 256). The labels are the classifier's own
    predictions, so every image is attacked and both paths do the same work."""

    torch.manual_seed(config.seed)
    encoder = build_contrastive_model(config.model.arch, ("normal",), "none", in_channels=images.shape[1])
    classifier = Classifier(encoder, 10, "normal").to(device).eval()
    x = to_float(images[: options.eval_images].to(device))
    with torch.no_grad():
        y = classifier(x).argmax(1)
    settings = config.evaluate
    paths = {
        "fast": (attack_copy(classifier, device, amp=True), True),
        "reference": (copy.deepcopy(classifier).to(device), False),
    }
    if not options.reference:
        paths.pop("reference")
    batches = {name: eval_batch_size(model, x, 0) if fast else CPU_BATCH for name, (model, fast) in paths.items()}
    attacks: dict[str, Callable[[Any, int], Any]] = {
        "pgd20": lambda model, batch: pgd_accuracy(
            model, x, y, settings.epsilon, settings.step_size, 20, batch_size=batch, seed=config.seed
        )
    }
    if options.autoattack:
        stage = "autoattack" if options.autoattack == "standard" else options.autoattack
        attacks[stage] = lambda model, batch: autoattack_accuracy(
            model, x, y, settings.epsilon, options.autoattack, batch, config.seed, device
        )
    rows = []
    for stage, attack in attacks.items():
        for name, (model, fast) in paths.items():  # warm-up
            with matmul_precision(device, fast):
                attack(model, batches[name])

        def run_once(name: str, attack=attack) -> int:
            model, fast = paths[name]
            with matmul_precision(device, fast):
                attack(model, batches[name])
            return x.shape[0]

        results = alternate(list(paths), run_once, options, device)
        for name, (rates, memory) in results.items():
            fast = paths[name][1]
            cuda = device.type == "cuda"
            rows.append(
                summarise(
                    stage,
                    "classifier",
                    name,
                    config.model.arch,
                    batches[name],
                    rates,
                    memory,
                    {"amp": fast and cuda, "channels_last": fast, "tf32": fast and cuda},
                    "untrained classifier, labels = its predictions (every image attacked)",
                    precision=precision_label(fast, fast, device),
                    precision_class="bf16" if fast and cuda else "fp32",
                )
            )
    return rows
