"""Checkpoints in and out: our encoder format, the released repos' formats, exports.

Why this module is strict: the released loaders all use ``load_state_dict(strict=False)``
and only log what they skipped. With a ``module.`` prefix left on (AdvCL's SLF script on
one GPU, RobustSSL's AdvCL loader) every key is skipped and a *random* encoder gets
evaluated. Here every key of a checkpoint is either loaded, dropped on purpose (the
other BN branches, and the prefixes listed per format below) or an error.

``load_encoder(path_or_state_dict, format, *, branch=None, arch=None) -> (model, info)``
--------------------------------------------------------------------------------------
Returns a ``bench.engine.models.ContrastiveModel`` (inputs in [0, 1], normalisation inside) and a
dict ``info`` describing what was loaded. ``branch`` picks the BatchNorm statistics:

- ``None``: the format's default, the adversarial branch where there is one ('pgd' for
  ACL and AdvCL, ``finetune_bn`` for our own checkpoints);
- a branch name, e.g. ``'normal'``: that branch;
- ``'all'``: every branch, each under its own name.

With one branch selected, the returned model has a single branch named ``'normal'`` (so
every default call such as ``model.features(x)`` uses the chosen statistics);
``info['branch']`` is always the name to route with in the returned model and
``info['source_branch']`` the checkpoint's name for it.

``info`` keys: format, family, source, arch, branch, source_branch, branches (of the
returned model), available_branches (in the checkpoint), normalization ('none',
'imagenet', 'cifar10' or 'custom'), projector (kind loaded, or None), ignored_keys (dropped on
purpose), dropped_branch_keys (count of the other branches' keys), stripped_prefix,
encoder_prefix, plus epoch / method / run_id when the checkpoint records them.

Our own format, ``bench``
-------------------------
``EncoderCheckpoint`` below is its one definition (fields, required ones, defaults); the
pipeline writes it as a run's ``encoder.pt``. ``arch`` is a key of ``bench.engine.models.ENCODERS``
('resnet18', 'resnet18_deacl' = padding-2 stem, 'small_cnn'): the stem is part of the arch, so a
DeACL encoder never loads into a padding-1 stem. The projector is loaded too; extra heads
(AdvCL's pseudo-label heads) are rebuilt as ``nn.Linear`` from their weight shapes.

The released formats (their key maps and what each drops) are ``bench.engine.checkpoint_formats``;
reading files and choosing branches is ``bench.engine.checkpoint_read``.

Every format: nn.DataParallel / DDP's ``module.`` prefix is stripped (wrapping is not part
of a format); every error is a ``CheckpointError`` (a ValueError) whose first line
summarises and whose next lines list the offending keys as the file spells them.

Architecture checks: every tensor's shape must equal ours (a 5×5 or 7×7 stem, other widths,
another depth are errors naming the tensors). Padding and stride leave no trace in a state
dict, so those formats build the architecture they were trained with (``deacl``: arch
``resnet18_deacl``, padding 2) and refuse ``arch=`` anything else by name. A missing
``num_batches_tracked`` is accepted (torch itself fills it in for metadata-less dicts).

Writing our checkpoints is ``bench.store.atomic.save_torch_atomic``; exports and RobustBench models
live in ``bench.runs.external``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench.choices import CHECKPOINT_FORMATS
from bench.engine.checkpoint_formats import (
    ACL,
    ADVCL,
    ARCH_NOTES,
    DEACL,
    DYNACL_PLUS_PLUS,
    EXTERNAL,
    ROBUSTSSL_CONTAINERS,
    ROCL,
    ExternalFormat,
)
from bench.engine.checkpoint_keys import LAYOUTS, LIST_LIMIT, CheckpointError, expected_keys, load_strict
from bench.engine.checkpoint_read import (
    ALL_BRANCHES,
    branch_renames,
    first_line,
    normalization_label,
    read_state,
    resolve_branches,
    routing,
    select_submodel,
    strip_data_parallel,
    unwrap,
)
from bench.engine.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALIZATIONS,
    PROJECTORS,
    Classifier,
    ContrastiveModel,
    Normalize,
    build_encoder,
    rebuild_contrastive_model,
)

FORMATS = CHECKPOINT_FORMATS  # the names live in bench.choices, torch-free, for the command's parser
BENCH_MARKER = "acl-bench"
_BN_LIST_INDEX = re.compile(r"\.bn_list\.(\d+)\.")


# --------------------------------------------------------------------------- reading


# --------------------------------------------------------------------------- branches


# --------------------------------------------------------------------------- external formats


def _detect_robustssl_family(state: Mapping[str, torch.Tensor], label: str) -> ExternalFormat:
    """Which code base wrote a RobustSSL model-zoo file (they keep their authors' key names)."""
    keys = list(state)
    if any(key.startswith("backbone.") for key in keys):
        return DEACL  # the authors' file (leaderboard footnote *): its padding-2 stem, not RobustSSL's padding 1
    if any(".bn_list.2." in key for key in keys) or any(key.startswith(ADVCL.ignored) for key in keys):
        return ADVCL
    single_bn = not any(".bn_list." in key for key in keys)
    if single_bn and "normalize.mean" in state and any(".downsample.0." in key for key in keys):
        return DYNACL_PLUS_PLUS
    if any(key.startswith(("encoder_k.", "encoder_q.", "normalize.")) or ".bn_list." in key for key in keys):
        return ACL
    if any(".shortcut." in key for key in keys):
        return ROCL
    raise CheckpointError(f"{label}: cannot tell which code base wrote it (keys start {sorted(keys)[:8]})")


def _available_external_branches(spec: ExternalFormat, state: Mapping[str, torch.Tensor]) -> list[str]:
    """The BN branches the checkpoint holds: its bn_list indices (all of the format's if none)."""
    if spec.layout != "multi_bn":
        return list(spec.bn_names)
    found = sorted({int(match.group(1)) for key in state for match in [_BN_LIST_INDEX.search(key)] if match})
    names = [spec.bn_names[index] for index in found if index < len(spec.bn_names)]
    return names or list(spec.bn_names)


def _build_external_model(spec: ExternalFormat, branches: Sequence[str], state: Mapping[str, torch.Tensor]):
    """The format's ResNet-18 with the given branches, its normalisation, no projector.

    The released projector is not imported (finetuning uses the encoder only); an Identity
    stands in so nobody mistakes freshly initialised weights for the released head.
    """
    normalize = None
    if spec.normalized:
        mean, std = state.get("normalize.mean"), state.get("normalize.std")
        if mean is not None and std is not None and mean.numel() == std.numel() == 3:
            normalize = Normalize(mean.flatten().tolist(), std.flatten().tolist())
        else:
            normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)  # the strict check reports the missing buffers
    with torch.random.fork_rng(devices=[]):
        encoder = build_encoder(spec.arch, tuple(branches))
    model_spec = {
        "arch": spec.arch,
        "branches": list(branches),
        "projector": "none",
        "in_channels": 3,
        "normalization": "custom" if normalize is not None else "none",
    }
    return ContrastiveModel(encoder, nn.Identity(), normalize, spec=model_spec)


def _load_external(
    spec: ExternalFormat, state: dict, meta: dict, label: str, branch: str | None, fmt: str, prefix: str
) -> tuple[ContrastiveModel, dict[str, Any]]:
    where = f"{fmt} checkpoint {label}"
    state, encoder_prefix, prefix_ignored = select_submodel(state, spec.encoder_prefixes, spec.ignored, where, prefix)
    available = _available_external_branches(spec, state)
    selected = resolve_branches(branch, available, spec.default_branch, where)
    branch_map = branch_renames(selected, keep_names=branch == ALL_BRANCHES)
    model = _build_external_model(spec, list(branch_map), state)
    naming = LAYOUTS[spec.layout]
    indices = {name: index for index, name in enumerate(spec.bn_names)}
    expected, dropped = expected_keys(
        list(model.state_dict()),
        branch_map,
        [name for name in available if name not in selected],
        lambda key, source_branch: naming(key, indices.get(source_branch)),
    )
    ignored = load_strict(
        model, state, expected, dropped, spec.ignored, where, ARCH_NOTES[spec.arch], prefix + encoder_prefix
    )
    if spec.fixed_normalization:  # not in the file: the released model class adds it (after the strict load)
        model.normalize = Normalize(*NORMALIZATIONS[spec.fixed_normalization])
    normalization = "none"
    if isinstance(model.normalize, Normalize):
        normalization = normalization_label(model.normalize.mean, model.normalize.std)
    routed, source_branch = routing(selected, spec.default_branch, keep_names=branch == ALL_BRANCHES)
    info = {
        "format": fmt,
        "family": spec.name,
        "source": label,
        "arch": spec.arch,
        "branch": routed,
        "source_branch": source_branch,
        "branches": list(branch_map),
        "available_branches": available,
        "normalization": normalization,
        "projector": None,
        "ignored_keys": sorted([prefix + key for key in prefix_ignored] + ignored),
        "dropped_branch_keys": len(dropped),
        "stripped_prefix": prefix,
        "encoder_prefix": encoder_prefix,
    }
    if isinstance(meta.get("epoch"), int):
        info["epoch"] = meta["epoch"]
    return model, info


# --------------------------------------------------------------------------- our format


@dataclass(frozen=True)
class EncoderCheckpoint:
    """Our encoder file (a run's ``encoder.pt``): the one definition of its fields.

    The trainer writes it with ``to_state()``; ``load_encoder(..., "bench")`` reads it back
    (the fields without a default are required there). ``pretrain_key`` lets another run with
    the same pretraining settings reuse the encoder.
    """

    model: Mapping[str, torch.Tensor]  # ContrastiveModel.state_dict(): encoder.*, projector.*, normalize.*, heads.*
    arch: str
    bn_branches: tuple[str, ...]
    projector: str
    normalization: str
    finetune_bn: str = ""  # default: bn_branches[0]
    in_channels: int = 3
    method: str = ""
    run_id: str = ""
    dataset: str = ""
    pretrain_epochs: int | None = None
    pretrain_key: str = ""
    format: str = BENCH_MARKER

    def to_state(self) -> dict[str, Any]:
        """The dict ``torch.save`` writes (plain types and tensors only: loadable with weights_only=True)."""
        state = {name.name: getattr(self, name.name) for name in dataclasses.fields(self)}
        state["model"], state["bn_branches"] = dict(self.model), list(self.bn_branches)
        return state


BENCH_REQUIRED = tuple(
    field.name for field in dataclasses.fields(EncoderCheckpoint) if field.default is dataclasses.MISSING
)
CLASSIFIER_MARKER = "acl-bench-classifier"


def classifier_state(classifier: Classifier) -> dict[str, Any]:
    """A finetuned classifier as plain data (a run's ``classifier_<scheme>.pt``): its state dict,
    the architecture description its encoder was built from, the BN branch and the class count.

    Nothing here is a pickled module, so ``load_classifier`` reads it with the weights-only
    unpickler: a classifier file copied from someone else's store cannot run code. The backbone's extra
    heads are left out: no logit passes through them, and a plugin's MLP head could not be rebuilt."""
    state = {key: value for key, value in classifier.state_dict().items() if not key.startswith("backbone.heads.")}
    spec, bn, classes = dict(classifier.backbone.spec), classifier.bn, classifier.head.out_features
    return {"format": CLASSIFIER_MARKER, "model_spec": spec, "bn": bn, "num_classes": classes, "state": state}


def load_classifier(path: str | os.PathLike) -> Classifier:
    """A classifier written from ``classifier_state``, rebuilt and loaded strictly (eval mode)."""
    stored, label = read_state(path)
    missing = [name for name in ("model_spec", "bn", "num_classes", "state") if name not in stored]
    if stored.get("format") != CLASSIFIER_MARKER or missing:
        raise CheckpointError(
            f"{label} is not an acl-bench classifier (format {stored.get('format')!r}, "
            f"missing {missing}): allowed files written by bench run or bench evaluate"
        )
    state = stored["state"]
    backbone_state = {
        key.removeprefix("backbone."): value for key, value in state.items() if key.startswith("backbone.")
    }
    try:
        classifier = Classifier(
            rebuild_contrastive_model(stored["model_spec"], backbone_state), int(stored["num_classes"]), stored["bn"]
        )
        classifier.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"classifier {label} does not match its recorded architecture: {first_line(error)}"
        ) from None
    return classifier.eval()


def _bench_fields(checkpoint: Mapping[str, Any], label: str) -> None:
    """Reject anything that is not our format before touching tensors, naming what is off."""
    missing = [name for name in BENCH_REQUIRED if name not in checkpoint]
    if missing:
        raise CheckpointError(
            f"bench checkpoint {label} lacks the fields {missing} "
            f"(found {sorted(map(str, checkpoint))[:LIST_LIMIT]}); "
            f"a released checkpoint needs its own format: {[name for name in FORMATS if name != 'bench']}"
        )
    if checkpoint.get("format", BENCH_MARKER) != BENCH_MARKER:
        raise CheckpointError(f"bench checkpoint {label} has format={checkpoint['format']!r}, not {BENCH_MARKER!r}")
    branches = checkpoint["bn_branches"]
    if not branches or not all(isinstance(name, str) for name in branches):
        raise CheckpointError(f"bench checkpoint {label}: bn_branches={branches!r} is not a list of names")
    if checkpoint["projector"] not in PROJECTORS:
        raise CheckpointError(
            f"bench checkpoint {label}: projector={checkpoint['projector']!r} is unknown: allowed {sorted(PROJECTORS)}"
        )


def _load_bench(
    checkpoint: Mapping[str, Any], label: str, branch: str | None, arch: str | None
) -> tuple[ContrastiveModel, dict[str, Any]]:
    _bench_fields(checkpoint, label)
    if arch is not None and arch != checkpoint["arch"]:
        raise CheckpointError(f"bench checkpoint {label} is a {checkpoint['arch']!r} encoder, not arch={arch!r}")
    if not isinstance(checkpoint["model"], Mapping):
        raise CheckpointError(f"bench checkpoint {label}: 'model' is not a state dict")
    state, prefix = strip_data_parallel(dict(checkpoint["model"]), label)
    available = list(checkpoint["bn_branches"])
    default = checkpoint.get("finetune_bn") or available[0]
    selected = resolve_branches(branch, available, default, f"bench checkpoint {label}")
    branch_map = branch_renames(selected, keep_names=branch == ALL_BRANCHES)
    spec = {
        "arch": checkpoint["arch"],
        "branches": list(branch_map),
        "projector": checkpoint["projector"],
        "in_channels": int(checkpoint.get("in_channels", 3)),
        "normalization": checkpoint["normalization"],
    }
    try:
        model = rebuild_contrastive_model(spec, state)
    except ValueError as error:
        raise CheckpointError(f"bench checkpoint {label}: {error}") from error
    expected, dropped = expected_keys(
        list(model.state_dict()),
        branch_map,
        [name for name in available if name not in selected],
        lambda key, source_branch: key.replace(".branches.@.", f".branches.{source_branch}."),
    )
    load_strict(
        model,
        state,
        expected,
        dropped,
        (),
        f"bench checkpoint {label}",
        f"the {checkpoint['arch']!r} model its fields describe",
        prefix,
    )
    routed, source_branch = routing(selected, default, keep_names=branch == ALL_BRANCHES)
    info = {
        "format": "bench",
        "family": "bench",
        "source": label,
        "arch": checkpoint["arch"],
        "branch": routed,
        "source_branch": source_branch,
        "branches": list(branch_map),
        "available_branches": available,
        "normalization": checkpoint["normalization"],
        "projector": checkpoint["projector"],
        "ignored_keys": [],
        "dropped_branch_keys": len(dropped),
        "stripped_prefix": prefix,
        "encoder_prefix": "",
    }
    info.update(
        {
            name: checkpoint[name]
            for name in ("method", "run_id", "finetune_bn", "dataset", "pretrain_epochs")
            if name in checkpoint
        }
    )
    return model, info


# --------------------------------------------------------------------------- public API


def load_encoder(
    path_or_state_dict: str | os.PathLike | Mapping[str, Any],
    format: str,
    *,
    branch: str | None = None,
    arch: str | None = None,
) -> tuple[ContrastiveModel, dict[str, Any]]:
    """Load an encoder checkpoint strictly into our model; see the module docstring.

    ``arch`` is the architecture the caller expects (``None``: the checkpoint's own; the
    released formats are CIFAR ResNet-18s: ``resnet18``, DeACL's ``resnet18_deacl``).
    Raises ``CheckpointError`` (a ValueError) for an unknown format, any unmatched or missing
    key, a shape mismatch or a wrong branch.
    """
    if format not in FORMATS:
        raise CheckpointError(f"checkpoint format {format!r} is unknown: allowed {list(FORMATS)}")
    checkpoint, label = read_state(path_or_state_dict)
    if format == "bench":
        return _load_bench(checkpoint, label, branch, arch)
    containers = ROBUSTSSL_CONTAINERS if format == "robustssl" else EXTERNAL[format].containers
    state, meta = unwrap(checkpoint, containers, f"{format} checkpoint {label}")
    state, prefix = strip_data_parallel(state, f"{format} checkpoint {label}")
    spec = _detect_robustssl_family(state, label) if format == "robustssl" else EXTERNAL[format]
    if arch not in (None, spec.arch):
        raise CheckpointError(
            f"{format} checkpoint {label} holds {ARCH_NOTES[spec.arch]}: arch={arch!r} is invalid (the weights would "
            f"load into a different function without a shape error): allowed {spec.arch!r}"
        )
    return _load_external(spec, state, meta, label, branch, format, prefix)
