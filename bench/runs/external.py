"""Encoders and classifiers from outside a ``bench run``: released checkpoints, RobustBench, export.

``bench finetune/evaluate --checkpoint`` puts a released encoder (the original repos', the
RobustSSL benchmark's, or one of ours) through exactly the protocol and the pipeline of ``bench run``:
``imported_plan`` makes it a run of a plan whose pretraining stage imports the file
(``bench.runs.imported``), so its numbers sit in the same table. ``--robustbench-model``
evaluates a supervised adversarial-training classifier under the same attacks (scheme ``AT``:
no finetuning; the same run, its one scheme evaluating the classifier). ``export_classifier`` writes a
classifier as a portable TorchScript file (``bench export``, ``bench.products.export``).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.config import ConfigError, config_hash, to_dict
from bench.engine import progress
from bench.engine.checkpoints import load_encoder
from bench.evaluation import protocol_resolution
from bench.evaluation.finetune import check_dual_bn, scheme_settings
from bench.methodkit import registry
from bench.methodkit.method import MethodParams
from bench.runs.imported import ImportedEncoder
from bench.runs.plan import MethodRun, RunPlan, RunRequest, assemble
from bench.store.atomic import atomic_write
from bench.store.provenance import file_digest

ROBUSTBENCH_DATASETS = ("cifar10", "cifar100")


def imported_plan(
    request: RunRequest,
    *,
    checkpoint: str | None,
    checkpoint_format: str,
    branch: str | None,
    name: str | None,
    robustbench_model: str | None,
    pretrain_dataset: str | None = None,
) -> RunPlan:
    """The plan of ``bench finetune/evaluate``: one run whose pretraining stage imports the encoder
    (``MethodRun.imported``, ``bench.runs.imported``) and whose other stages are ``bench run``'s.

    Everything is loaded and checked here, before the pipeline writes anything. Rows are labelled
    with the checkpoint's own method and pretraining dataset when it records them (acl-bench
    checkpoints), else with ``<format>:<file stem>`` and ``pretrain_dataset`` ('unknown' when not
    given: it is never guessed). The run id and identity are those external runs always had:
    ``<method>-external-s<seed>-<hash>``, the hash over the whole config, the file's digest and format.
    """
    config = assemble(request)
    protocol_resolution.check_overrides(config.finetune.protocol, list(request.overrides))
    data_name = config.data.eval_name or config.data.name
    if robustbench_model:
        if data_name not in ROBUSTBENCH_DATASETS or config.data.image_size != 32:
            raise ConfigError(
                f"data={data_name!r} at image_size={config.data.image_size} is invalid for a RobustBench "
                f"model: allowed {list(ROBUSTBENCH_DATASETS)} at 32 (e.g. --preset paper)"
            )
        classifier = load_robustbench_model(robustbench_model, dataset=data_name)
        label, file = f"robustbench:{robustbench_model}", robustbench_model
        imported = ImportedEncoder(
            source=robustbench_model,
            format=checkpoint_format,
            branch=branch,
            arch=None,
            digest="",
            dataset=data_name,
            pretrain_epochs=None,
            protocol_method=protocol_name(name, None, None),
            classifier=classifier,
        )
        schemes = ("AT",)  # a finished classifier: evaluated, not finetuned
    else:
        path = Path(checkpoint)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
        explicit_arch = config.model.arch if "model.arch" in request.overrides else None
        model, info = load_encoder(checkpoint, checkpoint_format, branch=branch, arch=explicit_arch)
        recorded = info.get("method") if checkpoint_format == "bench" else None
        label, file = f"{recorded or checkpoint_format}:{path.stem}", file_digest(path)
        protocol_method = protocol_name(name, recorded, info.get("family"))
        check_schemes(config, protocol_method, model, info.get("branch", "normal"))
        imported = ImportedEncoder(
            source=str(path.resolve()),
            format=checkpoint_format,
            branch=branch,
            arch=explicit_arch,
            digest=file,
            dataset=pretrain_dataset or info.get("dataset") or "unknown",
            pretrain_epochs=info.get("pretrain_epochs"),
            protocol_method=protocol_method,
        )
        schemes = config.finetune.schemes
    method = name or label
    identity = {
        "config": to_dict(config),
        "source": imported.source,
        "format": checkpoint_format,
        "branch": branch,
        "file": file,
        "pretrain_dataset": imported.dataset,
    }
    digest = config_hash(identity)
    run_id = f"{method.replace(':', '-').replace('/', '-')}-external-s{config.seed}-{digest}"
    executed = dataclasses.replace(config, finetune=dataclasses.replace(config.finetune, schemes=schemes))
    run = MethodRun(method, executed, MethodParams(), run_id, digest, "", identity, imported=imported, request=request)
    return RunPlan(config, (run,), force=request.force, resume=request.resume, track=request.track)


def protocol_name(name: str | None, recorded: str | None, family: str | None) -> str:
    """The method a protocol's per-method settings are looked up for: ``--name`` when it is a registered
    method, else the checkpoint's recorded method (acl-bench checkpoints), else its format's family."""

    if name and name in registry.available():
        return name
    return recorded or family or (name or "")


def check_schemes(config, method: str, model, bn: str) -> None:
    """Every scheme's settings resolve for this encoder before any work (dual-BN AFF needs both branches)."""
    for scheme in config.finetune.schemes:
        check_dual_bn(scheme_settings(config, scheme, method), model, bn)


def _quiet_jit(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """TorchScript calls warn that TorchScript is deprecated; the export is still the portable choice."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.*")
        return function(*args, **kwargs)


def _example_shape(classifier: nn.Module) -> tuple[int, int, int]:
    """[C, 32, 32] with C from the first convolution: our encoders pool adaptively, so the
    trace generalises over image sizes, but not over channel counts."""
    first_conv = next((module for module in classifier.modules() if isinstance(module, nn.Conv2d)), None)
    return (first_conv.in_channels if first_conv is not None else 3, 32, 32)


def export_classifier(
    classifier: nn.Module, path: str | os.PathLike, *, input_shape: Sequence[int] | None = None
) -> Path:
    """Write a finetuned classifier as one self-contained TorchScript file, atomically.

    The file is a ``torch.jit.trace`` of the classifier in eval mode on CPU. It maps images in
    [0, 1] to logits, normalisation and BN branch baked in, for any batch size (and, since our
    encoders pool adaptively, any image size), and needs only torch to load::

        model = torch.jit.load(path, map_location="cpu")   # an nn.Module, in eval mode
        robustbench.eval.benchmark(model, dataset="cifar10", threat_model="Linf", eps=8/255)

    ``input_shape`` = [C, H, W] of the trace input (default: the first convolution's channels,
    32, 32). BN always uses its running statistics in the trace (training-mode BN is not
    recorded), which is what evaluation needs. The pickled module (needs acl-bench importable)
    is the run directory's ``classifier_<scheme>.pt``. Why not ``torch.export``: its modules
    raise on ``.eval()``, which RobustBench users call. The reloaded trace must reproduce the
    classifier's logits before the file is moved into place.
    """
    model = copy.deepcopy(classifier).cpu().eval()
    shape = tuple(input_shape) if input_shape is not None else _example_shape(model)
    example = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(example)
        traced = _quiet_jit(torch.jit.trace, model, example)

    def verify(temp: Path) -> None:
        reloaded = _quiet_jit(torch.jit.load, str(temp), map_location="cpu")
        with torch.no_grad():
            logits = reloaded(example)
        if not torch.allclose(logits, reference, rtol=1e-4, atol=1e-5):
            raise RuntimeError(f"export of {type(classifier).__name__} does not reproduce its logits; not written")

    return atomic_write(path, lambda stream: _quiet_jit(torch.jit.save, traced, stream), verify)


def load_robustbench_model(
    name: str, dataset: str = "cifar10", threat_model: str = "Linf", model_dir: str | os.PathLike | None = None
) -> nn.Module:
    """A RobustBench model-zoo classifier (inputs in [0, 1]), in eval mode; downloads on first use.

    ``model_dir`` defaults to ``$ACL_BENCH_CACHE/robustbench`` (``~/.cache/acl-bench``) rather
    than RobustBench's ``./models``, so runs from different directories share downloads.
    """
    load_model = robustbench_loader()
    if model_dir is None:
        model_dir = Path(os.environ.get("ACL_BENCH_CACHE", "~/.cache/acl-bench")).expanduser() / "robustbench"
    model = load_model(model_name=name, dataset=dataset, threat_model=threat_model, model_dir=str(model_dir))
    return model.eval()


def alias_autoattack() -> bool:
    """Make ``import autoattack`` (and ``autoattack.state`` …) give the ``pyautoattack`` package.

    robustbench 1.1 imports fra31/auto-attack under its git name ``autoattack``
    (``robustbench/eval.py``: ``from autoattack import AutoAttack``, ``from autoattack.state import
    EvaluationState``); the PyPI distribution we depend on installs the same code as ``pyautoattack``.
    Nothing is aliased when a real ``autoattack`` is importable. Returns whether the alias was made."""
    if "autoattack" in sys.modules or importlib.util.find_spec("autoattack") is not None:
        return False
    importlib.import_module("pyautoattack")

    for name in ("state", "checks", "other_utils", "autopgd_base"):  # what robustbench and its callers import
        if importlib.util.find_spec(f"pyautoattack.{name}") is not None:
            importlib.import_module(f"pyautoattack.{name}")
    for name, module in list(sys.modules.items()):
        if name == "pyautoattack" or name.startswith("pyautoattack."):
            sys.modules["autoattack" + name.removeprefix("pyautoattack")] = module
    return True


def robustbench_loader() -> Callable[..., nn.Module]:
    """``robustbench.utils.load_model``, after the ``autoattack`` alias; a missing package and a package
    that fails to import are two different one-line ``ImportError``s."""
    alias_autoattack()
    try:
        from robustbench.utils import load_model
    except ModuleNotFoundError as error:
        if error.name == "robustbench" or (error.name or "").startswith("robustbench."):
            raise ImportError("robustbench is not installed: pip install 'acl-bench[robustbench]'") from None
        raise ImportError(f"robustbench is installed but failed to import: {progress.error_line(error)}") from None
    except Exception as error:  # noqa: BLE001 - any error inside its import is the same finding for the user
        raise ImportError(f"robustbench is installed but failed to import: {progress.error_line(error)}") from None
    return load_model
