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
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.config import PretrainConfig, RunConfig
from bench.engine import progress
from bench.engine.data import ImageData, load_dataset, to_float
from bench.engine.device import available_cores
from bench.engine.optim import build_optimizer
from bench.engine.shards import Shards, shard_generators
from bench.methodkit import registry
from bench.methodkit.method import Method, StepContext
from bench.products.reference_style import ReplayAugment, reference_batches
from bench.products.speed_measure import SpeedOptions, SpeedRow, measure, measure_evaluation, summarise
from bench.products.speed_stats import count_flops, precision_class, precision_label
from bench.runs.plan import MethodRun
from bench.runs.train import epoch_order, fast_path, pretrain, train_step, update
from bench.store.results import RunDir

# --------------------------------------------------------------------------- memory and timing


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
        self.batch_norm = "whole" if count == 1 or type(method).model.synced_bn else "per-shard"
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


# The paths of a pretraining measurement (name → (fast?, bf16 autocast?, TF32?)). On CUDA: the
# released-style pipeline at the released precision (fp32, PyTorch's default TF32 convolutions: the
# released scripts never switch it off), the same in strict fp32, the suite's fast path at the
# configured precision (paper default: fp32 with TF32, `pretrain.amp` false) and with bf16 autocast.
# On CPU TF32 and bf16 autocast do not apply: one reference and one fast row, both fp32.
CUDA_PATHS = {
    "reference": (False, False, True),
    "reference-strict": (False, False, False),
    "fast": (True, False, True),
    "fast-bf16": (True, True, True),
}
CPU_PATHS = {"reference": (False, False, False), "fast": (True, False, False)}


def path_kinds(device: torch.device) -> dict[str, tuple[bool, bool, bool]]:
    return CUDA_PATHS if device.type == "cuda" else CPU_PATHS


def path_settings(config: RunConfig, fast: bool, amp: bool = True, tf32: bool = True) -> PretrainConfig:
    """Fast: the config's switches (channels-last as configured: on CUDA by default, where tensor
    cores want it; on CPU it speeds the smoke CNN's pooling up but slows ResNet-18 down, and changes
    rounding, so it stays the user's choice there) with bf16 autocast and TF32 as given;
    reference-style: fp32 (TF32 as given), contiguous memory, no compilation, every read of the
    logged numbers as the released loops' ``loss.item()`` (cuDNN autotuning stays on, as AdvCL, RoCL
    and ACL set it)."""
    if fast:
        return dataclasses.replace(config.pretrain, amp=amp, tf32=tf32)
    return dataclasses.replace(
        config.pretrain,
        amp=False,
        channels_last="never",
        tf32=tf32,
        cudnn_benchmark=True,
        compile=False,
        compile_attack=False,
        host_sync="step",
    )


def switches(settings: PretrainConfig, device: torch.device, workers: int | None = None) -> dict[str, Any]:
    cuda = device.type == "cuda"
    channels_last = settings.channels_last == "always" or (settings.channels_last == "cuda" and cuda)
    values = {
        "amp": settings.amp and cuda,
        "channels_last": channels_last,
        "tf32": settings.tf32 and cuda,
        "compile": settings.compile,
        "compile_attack": settings.compile_attack,
        "host_sync": settings.host_sync,
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
    teacher = registry.get(type(method).teacher.method)
    return teacher(teacher.make_params({})).build_model(arch, in_channels)


def build_method(run: MethodRun, in_channels: int, folder: Path, train_images: torch.Tensor, device: torch.device):
    """The run's method (its resolved parameters) and model, set up on ``train_images``."""
    config = run.config
    method = run.method_class(random_pseudo_labels(run.params, train_images.shape[0], folder, config.seed))
    torch.manual_seed(config.seed)
    if run.method_class.teacher is not None and not getattr(run.params, "teacher", ""):
        method.set_teacher(untrained_teacher(method, config.model.arch, in_channels), {"source": "bench speed"})
    model = method.build_model(config.model.arch, in_channels).to(device)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    method.setup(model, train_images, StepContext(0, 0, 1, device, generator, config.attack))
    return method, model


def measure_method(
    run: MethodRun, data: torch.Tensor, options: SpeedOptions, device: torch.device, workers: int, folder: Path
) -> list[SpeedRow]:
    """The pretraining step of one method run on every path (``path_kinds``), side by side: each path
    starts from the same method state and weights, its FLOPs are counted on one real step (which is
    also a warm-up step), then the timed rounds alternate."""
    name, config = run.method, run.config
    method, model = build_method(run, data.shape[1], folder, data, device)
    paths, note = [], ""
    for path_name, (fast, amp, tf32) in path_kinds(device).items():
        if not fast and not options.reference:
            continue
        settings = path_settings(config, fast, amp, tf32)
        path_method, path_model = copy.deepcopy(method), copy.deepcopy(model)
        batches = None
        if not fast:
            batch = min(settings.batch_size, data.shape[0])
            batches = reference_batches(data, path_method, batch, workers, device, config.seed)
            if batches is None:
                note = "no reference-style path: the method's views have no released PIL counterpart"
                continue
        paths.append(PathRun(path_name, path_method, path_model, settings, config, data, device, batches))
    flops = {path.name: count_flops(lambda path=path: _run_uncompiled(path)) / path.batch for path in paths}
    results = measure(paths, options, device)
    rows = []
    for path in paths:
        rates, memory = results[path.name]
        s = path.settings
        rows.append(
            summarise(
                "pretrain",
                name,
                path.name,
                config.model.arch,
                path.batch,
                rates,
                memory,
                switches(s, device, workers if path.batches is not None else None),
                note,
                precision=precision_label(s.amp, s.tf32, device),
                precision_class=precision_class(s.amp, s.tf32, device),
                flops_per_image=flops[path.name],
            )
        )
    return rows


def _run_uncompiled(path: PathRun) -> None:
    """One step of ``path`` without the compiler (it changes how, not what, is computed, and the FLOP
    counter cannot see inside a compiled graph)."""
    saved = path.settings
    path.settings = dataclasses.replace(saved, compile=False, compile_attack=False)
    try:
        path.run(1)
    finally:
        path.settings = saved


# --------------------------------------------------------------------------- one whole epoch


def measure_epoch(run: MethodRun, data: torch.Tensor, device: torch.device, folder: Path) -> list[SpeedRow]:
    """One epoch of ``bench.runs.train.pretrain`` over ``data`` on each fast path of the device (CUDA:
    the configured precision and bf16 autocast): its loop time, setup excluded."""
    rows = []
    for path_name, (fast, amp, tf32) in path_kinds(device).items():
        if not fast:
            continue
        name, config = run.method, run.config
        run_config = copy.deepcopy(config)
        run_config.pretrain = path_settings(config, True, amp, tf32)
        run_config.pretrain.epochs = 1
        run_config.pretrain.checkpoint_every = 10**9  # only the final checkpoint
        method, model = build_method(dataclasses.replace(run, config=run_config), data.shape[1], folder, data, device)
        run_dir = RunDir(folder / f"epoch-{name}-{path_name}")
        result = pretrain(method, model, data, run_config, run_dir, device, resume=False)
        batch = min(run_config.pretrain.batch_size, data.shape[0])
        rate = result.steps * batch / result.wall_s
        s = run_config.pretrain
        rows.append(
            SpeedRow(
                "epoch",
                name,
                path_name,
                config.model.arch,
                batch,
                rate,
                (rate, rate),
                None,
                1,
                {**switches(s, device), "epoch_s": round(result.wall_s, 2), "images": data.shape[0]},
                precision=precision_label(s.amp, s.tf32, device),
                precision_class=precision_class(s.amp, s.tf32, device),
                rates=(rate,),
            )
        )
    return rows


# --------------------------------------------------------------------------- the command


# `--quick`: one method per family (the A-InfoNCE variants change the loss, not the forwards; the
# targets name acl and advcl-ip), APGD-CE for AutoAttack (a fixed 100 iterations per image), and
# ResNet-18 at batch 32 for acl and advcl-ip with one step per repeat.
QUICK = SpeedOptions(warmup=1, steps=2, repeats=3, max_repeats=6, eval_images=32, autoattack="apgd-ce")
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
            rows += measure_epoch(run, data, device, Path(folder))
    return rows


def _cores() -> int:

    return available_cores()
