"""``bench export``: a stored finetuned classifier in a portable format, with a JSON sidecar.

Formats (issue 14 §4):

- ``torchscript``: one self-contained ``torch.jit`` file (``bench.runs.external.export_classifier``); needs
  only torch to load and run, normalisation and BN branch baked in.
- ``robustbench``: ``{"state_dict": classifier.state_dict()}``, the layout RobustBench's
  ``robustbench.utils.load_model`` reads from ``models/<dataset>/<threat>/<name>.pt`` (it takes
  ``checkpoint["state_dict"]`` and strips ``module.``). Our architectures are not in its model zoo, so
  the sidecar's ``model_spec`` says how to build the module the weights go into (``load_exported``).
- ``safetensors``: the same tensors in a ``.safetensors`` file (no pickle at all), the sidecar also
  stored in its metadata under ``acl_bench``. Needs the ``safetensors`` package (``acl-bench[export]``).

The sidecar (``<out>.json``) records what a reader needs to use and cite the weights: method, run id,
scheme, architecture and BN branch, input range and normalisation, dataset and threat model, the
run's accuracies under each attack, the code version that produced the run and the one that exported
it, and the file's sha256. Every file is written atomically; each export is loaded back and must
reproduce the classifier's logits before it is moved into place.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.config import SCHEMES, ConfigError
from bench.engine.checkpoint_read import PICKLE, SAFETENSORS, TORCH_ZIP, TORCHSCRIPT, file_format, refuse_torchscript
from bench.engine.checkpoints import CLASSIFIER_MARKER, CheckpointError, classifier_state, load_classifier
from bench.errors import did_you_mean
from bench.runs.external import export_classifier
from bench.store.atomic import atomic_write, write_atomic
from bench.store.provenance import code_version
from bench.store.results import ResultsStore, RunDir

FORMATS = ("torchscript", "robustbench", "safetensors")
# The bytes each export format is written as (``bench.engine.checkpoint_read.file_format``)
FILE_FORMATS = {"torchscript": (TORCHSCRIPT,), "robustbench": (TORCH_ZIP, PICKLE), "safetensors": (SAFETENSORS,)}
SIDECAR_FORMAT = "acl-bench-export"


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def export_run(results_dir: Path, run_id: str, scheme: str, out: Path, fmt: str = "torchscript") -> Path:
    """Write the ``scheme`` classifier of a stored run as ``fmt`` to ``out`` (a directory receives
    ``<run id>-<scheme>.<ext>``), then its sidecar; returns the weights file's path."""
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt!r} is invalid{did_you_mean(fmt, FORMATS)}: allowed {list(FORMATS)}")
    if scheme not in SCHEMES:
        raise ConfigError(f"scheme={scheme!r} is invalid{did_you_mean(scheme, SCHEMES)}: allowed {list(SCHEMES)}")
    store = ResultsStore(results_dir)
    run = store.run(run_id)
    if not run.path.is_dir():
        raise ConfigError(f"run_id={run_id!r} is invalid: allowed a run id in {store.runs} ({store.near(run_id)})")
    source = run.classifier(scheme)
    if not source.exists():
        raise FileNotFoundError(f"no {scheme} classifier stored for run {run_id!r} (looked for {source})")
    if out.is_dir():  # like cp: a directory receives the file under the run's name (its last part only:
        # a run given as a path, `../../x/runs/ID`, once put the file outside the directory, review 2 D15)
        out = out / f"{run.run_id}-{scheme}{'.safetensors' if fmt == 'safetensors' else '.pt'}"
    classifier = load_classifier(source)
    stored = classifier_state(classifier)
    sidecar = describe(run, scheme, stored, fmt)
    if fmt == "torchscript":
        export_classifier(classifier, out)
    elif fmt == "robustbench":
        _write_checked(out, lambda stream: torch.save({"state_dict": stored["state"]}, stream), classifier, sidecar)
    else:
        safetensors = _safetensors()
        payload = safetensors.save(
            {key: value.contiguous() for key, value in stored["state"].items()},
            metadata={"acl_bench": json.dumps(sidecar, sort_keys=True)},
        )
        _write_checked(out, lambda stream: stream.write(payload), classifier, sidecar)
    sidecar["sha256"] = hashlib.sha256(out.read_bytes()).hexdigest()
    write_atomic(sidecar_path(out), json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return out


def describe(run: RunDir, scheme: str, stored: dict[str, Any], fmt: str) -> dict[str, Any]:
    """The sidecar: everything needed to rebuild, use and cite the exported classifier."""
    config = RunDir.read_json_or_none(run.config) or {}
    rows = [
        row for row in (run.read_rows() if run.rows.exists() else run.read_scheme_rows(scheme)) if row.scheme == scheme
    ]
    spec = stored["model_spec"]
    evaluate = config.get("evaluate", {})
    return {
        "format": SIDECAR_FORMAT,
        "weights_format": fmt,
        "method": config.get("method", rows[0].method if rows else ""),
        "run_id": run.run_id,
        "scheme": scheme,
        "arch": spec.get("arch"),
        "bn_branch": stored["bn"],
        "num_classes": stored["num_classes"],
        "model_spec": spec,
        "input": {
            "range": [0.0, 1.0],
            "channels": spec.get("in_channels", 3),
            "normalization": spec.get("normalization", "none"),
            "normalization_inside_model": True,
        },
        "dataset": config.get("data", {}).get("name", rows[0].dataset if rows else ""),
        "eval_dataset": rows[0].eval_dataset if rows else "",
        "threat_model": {"norm": "Linf", "epsilon": rows[0].epsilon if rows else evaluate.get("epsilon")},
        "metrics": {
            f"{row.attack}" if row.metric == "accuracy" else f"{row.attack}:{row.metric}": row.value for row in rows
        },
        "n_eval": rows[0].n_eval if rows else None,
        "run_code_version": rows[0].code_version if rows else "",
        "exported_by": code_version(),
    }


def _write_checked(out: Path, write, classifier: nn.Module, sidecar: dict[str, Any]) -> None:
    """Atomic write whose temp file must load back (``load_exported``) into the same logits."""
    example = torch.rand(2, sidecar["input"]["channels"], 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = classifier(example)

    def verify(temp: Path) -> None:
        with torch.no_grad():
            logits = load_weights(temp, sidecar)(example)
        if not torch.equal(logits, reference):
            raise RuntimeError(f"the {sidecar['weights_format']} export does not reproduce the logits; not written")

    atomic_write(out, write, verify)


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise ImportError(
            "the safetensors format needs the safetensors package: pip install 'acl-bench[export]'"
        ) from None
    return safetensors.torch


def load_exported(path: str | Path, *, allow_torchscript: bool = False) -> nn.Module:
    """The classifier of an export (any format), from the file and its sidecar; eval mode, CPU.

    The loader follows the file's own bytes, never the sidecar's word alone: a robustbench or
    safetensors file is plain tensors (weights-only unpickler, or safetensors) put into the module the
    sidecar's ``model_spec`` builds. A TorchScript file is a program, and loading it runs its code
    (``__setstate__``), so it loads only with ``allow_torchscript=True``: pass it only for a file you
    trust. The file must have the sha256 its sidecar records: an export killed between the weights and
    the sidecar would otherwise load one run's weights under another run's description."""
    path = Path(path)
    sidecar_file = sidecar_path(path)
    if not sidecar_file.exists():
        raise FileNotFoundError(f"{path} has no sidecar {sidecar_file}: export it with bench export")
    sidecar = json.loads(sidecar_file.read_text())
    if sidecar.get("format") != SIDECAR_FORMAT or sidecar.get("weights_format") not in FORMATS:
        raise CheckpointError(
            f"{sidecar_file} is not an acl-bench export sidecar: allowed files written by bench export"
        )
    actual = file_format(path)
    if actual == TORCHSCRIPT and not allow_torchscript:
        raise CheckpointError(refuse_torchscript(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sidecar.get("sha256"):
        raise CheckpointError(
            f"{path}: its sha256 {digest[:12]}… differs from its sidecar's {str(sidecar.get('sha256'))[:12]}… "
            "(an interrupted or overwritten export?): export it again"
        )
    if sidecar["weights_format"] == "torchscript":
        if actual != TORCHSCRIPT:
            raise CheckpointError(f"{path} is a {actual} file, not the TorchScript archive its sidecar names")
        return torch.jit.load(str(path), map_location="cpu").eval()
    return load_weights(path, sidecar)


def load_weights(path: Path, sidecar: dict[str, Any]) -> nn.Module:
    """A robustbench- or safetensors-format file's tensors in the module the sidecar describes.

    The file's bytes must be the format the sidecar names, so no loader meets a file it was not built for."""
    actual = file_format(path)
    if actual not in FILE_FORMATS[sidecar["weights_format"]]:
        if actual == TORCHSCRIPT:
            raise CheckpointError(refuse_torchscript(path))
        raise CheckpointError(
            f"{path} is a {actual} file, but its sidecar says {sidecar['weights_format']!r}: "
            f"allowed {' or '.join(FILE_FORMATS[sidecar['weights_format']])} bytes for that format"
        )
    if sidecar["weights_format"] == "safetensors":
        state = _safetensors().load_file(str(path), device="cpu")
    else:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(loaded, dict) or "state_dict" not in loaded:
            raise CheckpointError(f"{path} lacks the 'state_dict' entry of a robustbench-format checkpoint")
        state = {key.removeprefix("module."): value for key, value in loaded["state_dict"].items()}
    return load_classifier(
        {
            "format": CLASSIFIER_MARKER,
            "model_spec": sidecar["model_spec"],
            "bn": sidecar["bn_branch"],
            "num_classes": sidecar["num_classes"],
            "state": state,
        }
    )
