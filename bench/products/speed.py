"""``bench speed``: throughput of the fast path against a reference-style path, side by side.

For every selected method's pretraining step (and PGD-20 / AutoAttack evaluation) it measures
images per second and peak memory of two paths, in one process, on the same device, model,
batch and method parameters, after warm-up, over several repeats (median), the two paths
alternating so that a shared machine's load hits both alike:
- fast: the suite's own step (``bench.runs.train.train_step``): uint8 data on the device, batched
  on-device views (``bench.engine.views``), each view forwarded once per step, bf16 autocast,
  channels-last, cuDNN autotuning and TF32 on CUDA (optionally ``torch.compile``);
- reference-style: the released pipelines step by step: per-image PIL augmentation in DataLoader
  worker processes (torchvision transforms, as LijieFan/AdvCL pretraining_advCL.py, Kim-Minseon/RoCL
  data_loader.py and VITA-Group/Adversarial-Contrastive-Learning train_simCLR.py), fp32 without
  TF32, contiguous memory, and the method's ``ctx.reference_style`` path, which recomputes what
  the released attack recomputes (AdvCL: x1, x2, HFC at every PGD step; RoCL: x2; ACL: weight
  gradients at every PGD step) and gives the same loss on the same inputs (tests/test_speed.py).
Both paths use the method's own code for everything else, so their ratio compares equal work.

Outputs: ``speed.csv`` (results directory) and ``speed.md`` (reports directory), which also
projects the device-hours of the A-InfoNCE Table 1 pretraining and of a whole ``--methods all``
paper run from the measured throughput (``bench.products.speed_report``).
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.config import PretrainConfig, RunConfig
from bench.engine import progress
from bench.engine.data import ImageData, load_dataset, to_float
from bench.engine.device import available_cores
from bench.engine.models import Classifier, build_contrastive_model
from bench.engine.optim import build_optimizer
from bench.engine.shards import Shards, shard_generators
from bench.evaluation.batching import CPU_BATCH, eval_batch_size
from bench.evaluation.evaluate import attack_copy, autoattack_accuracy, pgd_accuracy
from bench.methodkit import registry
from bench.methodkit.method import Method, StepContext
from bench.products.reference_style import ReplayAugment, reference_batches
from bench.runs.plan import MethodRun
from bench.runs.train import epoch_order, fast_path, pretrain, train_step, update
from bench.store.results import RunDir


@dataclass
class SpeedOptions:
    """What to measure and how often (``bench speed`` flags)."""

    warmup: int = 2  # steps before timing (cuDNN autotuning, compilation, loader start)
    steps: int = 3  # steps per timed repeat
    repeats: int = 3  # timed repeats per path; the median is reported
    loader_workers: int = 0  # reference-style DataLoader workers; 0 = min(8, cores)
    eval_images: int = 256  # images of the PGD-20 / AutoAttack measurement (0 = skip evaluation)
    autoattack: str = "standard"  # 'standard', 'apgd-ce' (its first attack: 100 iterations on every image) or ''
    reference: bool = True
    stages: tuple[str, ...] = ("pretrain", "eval", "epoch")  # what to measure (epoch: only for epoch_runs)


@dataclass
class SpeedRow:
    """One measured path: the median throughput and peak memory over the repeats."""

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


# --------------------------------------------------------------------------- memory and timing


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


# --------------------------------------------------------------------------- one path of one method


class PathRun:
    """A method, its model and optimiser, and how one step of one path gets its batch."""

    def __init__(
        self,
        name: str,
        method: Method,
        model,
        settings: PretrainConfig,
        config: RunConfig,
        images: torch.Tensor,
        device: torch.device,
        batches=None,
    ):
        self.name, self.method, self.model, self.settings = name, method, model, settings
        self.config, self.images, self.device, self.batches = config, images, device, batches
        self.optimizer = build_optimizer(model.parameters(), settings)
        count = settings.shards
        self.shards = Shards(count, shard_generators(config.seed, range(count), device))
        self.batch = min(settings.batch_size, images.shape[0])
        self.step, self.order = 0, None
        self.batch_norm = "whole" if count == 1 or getattr(method, "synced_batch_norm", False) else "per-shard"
        if batches is not None:
            method.augment = ReplayAugment(self.shards.generators)
            if getattr(type(method), "weak_augment", None) is not None:
                method.weak_augment = ReplayAugment(self.shards.generators)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.batches is None:  # as bench.runs.train: a seeded order per epoch, on the device
            epoch, position = divmod(self.step, max(1, self.images.shape[0] // self.batch))
            if self.order is None or position == 0:
                self.order = epoch_order(self.images.shape[0], self.config.seed, epoch).to(self.device)
            indices = self.order[position * self.batch : (position + 1) * self.batch]
            return to_float(self.images[indices]), indices
        indices, views = next(self.batches)
        self.method.augment.load(views[:2])
        if len(views) > 2:
            self.method.weak_augment.load(views[2:])
        return to_float(self.images[indices]), indices

    def run(self, steps: int) -> None:
        with fast_path(self.model, self.settings, self.device) as step_model:
            for _ in range(steps):
                images, indices = self.next_batch()
                context = StepContext(
                    epoch=0,
                    step=self.step,
                    steps_per_epoch=1,
                    device=self.device,
                    generator=self.shards.generators[0],
                    attack=self.config.attack,
                    indices=indices,
                    shards=self.shards,
                    reference_style=self.batches is not None,
                )
                loss, _ = train_step(self.method, step_model, images, context, self.settings, self.batch_norm)
                update(self.model, self.optimizer, loss, None)
                self.method.after_step(self.model, context)
                self.step += 1


def path_settings(config: RunConfig, fast: bool) -> PretrainConfig:
    """Fast: the config's switches with bf16 autocast and TF32 on (both CUDA only; channels-last as
    configured: on CUDA by default, where tensor cores want it; on CPU it speeds the smoke CNN's
    pooling up but slows ResNet-18 down, and changes rounding, so it stays the user's choice there);
    reference-style: fp32, no TF32, contiguous memory, no compilation (cuDNN autotuning stays on,
    as AdvCL, RoCL and ACL set it)."""
    if fast:
        return dataclasses.replace(config.pretrain, amp=True, tf32=True)
    return dataclasses.replace(
        config.pretrain, amp=False, channels_last="never", tf32=False, cudnn_benchmark=True, compile=False
    )


def measure(
    paths: list[PathRun], options: SpeedOptions, device: torch.device
) -> dict[str, tuple[list[float], PeakMemory]]:
    """Warm every path up, then alternate timed repeats between them; images/s of each repeat."""
    results = {path.name: ([], PeakMemory(device)) for path in paths}
    for path in paths:
        path.run(options.warmup)
    for _ in range(options.repeats):
        for path in paths:
            rates, memory = results[path.name]
            with memory.measure():
                seconds = timed(lambda path=path: path.run(options.steps), device)
            rates.append(options.steps * path.batch / seconds)
    return results


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
    )


def switches(settings: PretrainConfig, device: torch.device, workers: int | None = None) -> dict[str, Any]:
    cuda = device.type == "cuda"
    channels_last = settings.channels_last == "always" or (settings.channels_last == "cuda" and cuda)
    values = {
        "amp": settings.amp and cuda,
        "channels_last": channels_last,
        "tf32": settings.tf32 and cuda,
        "compile": settings.compile,
        "shards": settings.shards,
    }
    if workers is not None:
        values["loader_workers"] = workers
    return values


# --------------------------------------------------------------------------- methods


def random_pseudo_labels(params: Any, n: int, folder: Path, seed: int) -> Any:
    """A method with a ``pseudo_labels`` file parameter (AdvCL) gets random labels: the step's cost
    does not depend on them, and k-means over the data would only lengthen the benchmark."""
    names = {f.name for f in dataclasses.fields(params)}
    if "pseudo_labels" not in names or "pseudo_label_ks" not in names or params.pseudo_labels:
        return params
    rng = np.random.default_rng(seed)
    path = folder / f"random_pseudo_labels_{n}.npz"
    np.savez(path, **{f"pseudo_train_{k}": rng.integers(0, k, n) for k in params.pseudo_label_ks})
    return dataclasses.replace(params, pseudo_labels=str(path))


def untrained_teacher(method: Method, arch: str, in_channels: int) -> torch.nn.Module:
    """A distilling method's teacher (DeACL's SimCLR encoder) at its initial weights: the step
    forwards it frozen, so its cost does not depend on its weights, and pretraining it first
    would only lengthen the benchmark."""
    teacher = registry.get(method.teacher_method)
    return teacher(teacher.make_params({})).build_model(arch, in_channels)


def build_method(run: MethodRun, in_channels: int, folder: Path, train_images: torch.Tensor, device: torch.device):
    """The run's method (its resolved parameters) and model, set up on ``train_images``."""
    config = run.config
    method = run.method_class(random_pseudo_labels(run.params, train_images.shape[0], folder, config.seed))
    torch.manual_seed(config.seed)
    if method.requires_teacher and not getattr(run.params, "teacher", ""):
        method.set_teacher(untrained_teacher(method, config.model.arch, in_channels), {"source": "bench speed"})
    model = method.build_model(config.model.arch, in_channels).to(device)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    method.setup(model, train_images, StepContext(0, 0, 1, device, generator, config.attack))
    return method, model


def measure_method(
    run: MethodRun, data: torch.Tensor, options: SpeedOptions, device: torch.device, workers: int, folder: Path
) -> list[SpeedRow]:
    """Fast and reference-style pretraining steps of one method run, side by side."""
    name, config = run.method, run.config
    method, model = build_method(run, data.shape[1], folder, data, device)
    fast_settings = path_settings(config, True)
    paths = [PathRun("fast", method, model, fast_settings, config, data, device)]
    note = ""
    if options.reference:
        reference_method, reference_model = copy.deepcopy(method), copy.deepcopy(model)
        settings = path_settings(config, False)
        batches = reference_batches(
            data, reference_method, min(settings.batch_size, data.shape[0]), workers, device, config.seed
        )
        if batches is None:
            note = "no reference-style path: the method's views have no released PIL counterpart"
        else:
            paths.append(
                PathRun("reference", reference_method, reference_model, settings, config, data, device, batches)
            )
    results = measure(paths, options, device)
    rows = []
    for path in paths:
        rates, memory = results[path.name]
        rows.append(
            summarise(
                "pretrain",
                name,
                path.name,
                config.model.arch,
                path.batch,
                rates,
                memory,
                switches(path.settings, device, workers if path.batches is not None else None),
                note,
            )
        )
    return rows


# --------------------------------------------------------------------------- evaluation attacks


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
        results = {name: ([], PeakMemory(device)) for name in paths}
        for name, (model, fast) in paths.items():  # warm-up
            with matmul_precision(device, fast):
                attack(model, batches[name])
        for _ in range(options.repeats):
            for name, (model, fast) in paths.items():
                rates, memory = results[name]
                with matmul_precision(device, fast), memory.measure():
                    seconds = timed(lambda attack=attack, model=model, name=name: attack(model, batches[name]), device)
                rates.append(x.shape[0] / seconds)
        for name, (rates, memory) in results.items():
            fast = paths[name][1]
            rows.append(
                summarise(
                    stage,
                    "classifier",
                    name,
                    config.model.arch,
                    batches[name],
                    rates,
                    memory,
                    {
                        "amp": fast and device.type == "cuda",
                        "channels_last": fast,
                        "tf32": fast and device.type == "cuda",
                    },
                    "untrained classifier, labels = its predictions (every image attacked)",
                )
            )
    return rows


# --------------------------------------------------------------------------- one whole epoch


def measure_epoch(run: MethodRun, data: torch.Tensor, device: torch.device, folder: Path) -> SpeedRow:
    """One epoch of ``bench.runs.train.pretrain`` (fast path) over ``data``: its loop time, setup excluded."""

    name, config = run.method, run.config
    run_config = copy.deepcopy(config)
    run_config.pretrain = path_settings(config, True)
    run_config.pretrain.epochs = 1
    run_config.pretrain.checkpoint_every = 10**9  # only the final checkpoint
    method, model = build_method(dataclasses.replace(run, config=run_config), data.shape[1], folder, data, device)
    result = pretrain(method, model, data, run_config, RunDir(folder / f"epoch-{name}"), device, resume=False)
    images = result.steps * min(run_config.pretrain.batch_size, data.shape[0])
    return SpeedRow(
        "epoch",
        name,
        "fast",
        config.model.arch,
        min(run_config.pretrain.batch_size, data.shape[0]),
        images / result.wall_s,
        (images / result.wall_s,) * 2,
        None,
        1,
        {**switches(run_config.pretrain, device), "epoch_s": round(result.wall_s, 2), "images": data.shape[0]},
    )


# --------------------------------------------------------------------------- the command


# `--quick`: one method per family (the A-InfoNCE variants change the loss, not the forwards; the
# targets name acl and advcl-ip), APGD-CE for AutoAttack (a fixed 100 iterations per image), and
# ResNet-18 at batch 32 for acl and advcl-ip with one step per repeat.
QUICK = SpeedOptions(warmup=1, steps=2, repeats=3, eval_images=32, autoattack="apgd-ce")
QUICK_METHODS = ("simclr", "acl", "rocl", "advcl-ip")
QUICK_EXTRA = {"model.arch": "resnet18", "pretrain.batch_size": "32"}
QUICK_EXTRA_METHODS = ("acl", "advcl-ip")
QUICK_EXTRA_STEPS = 1


def synthetic_images(count: int, channels: int, size: int, seed: int) -> torch.Tensor:
    """Random uint8 images (CIFAR-shaped by default): where the real dataset cannot be downloaded
    (the GPU check), the step costs the same on random pixels."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, channels, size, size), dtype=torch.uint8, generator=generator)


def training_images(config: RunConfig, synthetic: int) -> torch.Tensor:
    if synthetic:
        return synthetic_images(synthetic, 3, config.data.image_size, config.seed)
    data: ImageData = load_dataset(config.data.name, config.data.data_dir, config.data.download, config.data.image_size)
    return data.x_train


def run_speed(
    runs: list[MethodRun],
    base: RunConfig,
    options: SpeedOptions,
    *,
    device: torch.device,
    synthetic: int = 0,
    extra: list[MethodRun] = (),
    extra_options: SpeedOptions | None = None,
    epoch_runs: list[MethodRun] = (),
) -> list[SpeedRow]:
    """Every measurement of one ``bench speed`` call (the caller writes the files): the pretraining
    steps of ``runs`` (and ``extra``, e.g. ResNet-18 at batch 32), the evaluation attacks on the
    base config's model, one epoch of each of ``epoch_runs``."""
    images = training_images(base, synthetic)
    data = images.to(device)
    workers = options.loader_workers or min(8, _cores())
    rows: list[SpeedRow] = []
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as folder:
        pretraining = [(run, options) for run in runs] + [(run, extra_options or options) for run in extra]
        for run, run_options in pretraining if "pretrain" in options.stages else []:
            batch = min(run.config.pretrain.batch_size, len(data))
            progress.log(
                f"speed: {run.method} ({run.config.model.arch}, batch {batch}, shards {run.config.pretrain.shards})"
            )
            rows += measure_method(run, data, run_options, device, workers, Path(folder))
        if options.eval_images and "eval" in options.stages:
            progress.log(f"speed: PGD-20 and AutoAttack on {min(options.eval_images, len(data))} images")
            rows += measure_evaluation(base, data, options, device)
        for run in epoch_runs if "epoch" in options.stages else []:
            progress.log(f"speed: one epoch of {run.method} on {len(data)} images")
            rows.append(measure_epoch(run, data, device, Path(folder)))
    return rows


def _cores() -> int:

    return available_cores()
