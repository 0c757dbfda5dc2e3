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

Released formats (key maps; verified against the repositories' code)
-------------------------------------------------------------------
Our encoder keys are ``encoder.<path>`` with BN tensors at ``<bn>.branches.<name>.<t>``
(t = weight, bias, running_mean, running_var, num_batches_tracked).

acl (VITA-Group/Adversarial-Contrastive-Learning, models/resnet_multi_bn.py; train_simCLR.py
saves ``{'epoch', 'state_dict', 'optim'}`` without DataParallel; DynACL saves the same names
under ``encoder_q.`` / ``encoder_k.``)
    <bn>.bn_list.<i>.<t>               -> <bn>.branches.<name_i>.<t>, i: 0 = normal, 1 = pgd
    layerN.0.downsample.conv.weight    -> layerN.0.shortcut.0.weight
    layerN.0.downsample.bn.bn_list.<i> -> layerN.0.shortcut.1.branches.<name_i>
    normalize.mean / normalize.std     -> normalize.mean / std (shape [3] -> [1, 3, 1, 1];
                                          ImageNet statistics in the released code)
    ignored: ``fc.*`` (proj_head fc.fc1-3 / fc.bn1-3, or a linear head) and, for DynACL,
    ``encoder_q.*`` (the momentum key encoder ``encoder_k.*`` is the one DynACL evaluates;
    ``encoder_q.`` is used only when there is no ``encoder_k.``).
advcl (LijieFan/AdvCL and yqy2001/A-InfoNCE Asym-AdvCL, models/resnet_cifar_multibn_ensembleFC.py;
pretraining_advCL.py saves ``{'model', 'epoch', 'rng_state'}`` of an nn.DataParallel, so every
key starts with ``module.``, stripped here)
    the same names as acl, i: 0 = normal, 1 = pgd, 2 = pgd_ce; no normalisation layer.
    ignored: ``head_proj.*``, ``head_pred.*``, ``head_ce.*``, ``fc_002.*``, ``fc_010.*``,
    ``fc_050.*``, ``fc_100.*``, ``fc_500.*`` (projector, predictor and pseudo-label heads).
rocl (Kim-Minseon/RoCL src/models/resnet.py, kuangliu-style; rocl_train.py saves
``{'epoch', 'acc', 'model', 'optimizer_state', 'rng_state'}`` of a DDP model: ``module.``;
the projector goes to a separate ``*_projector`` file)
    <bn>.<t> -> <bn>.branches.normal.<t> (bn1, bn2, shortcut.1); every other name is ours;
    one BN set, no normalisation layer. ``avg_pool2d(4)`` = our global pool at 32×32.
    ignored: ``linear.*`` (the classifier of contrastive_learning=False), ``linear_1.*``,
    ``linear_2.*`` (the Projector, should it be merged in).
dynacl (PKU-ML/DYNACL train_DynACL.py: ``model_encoder_k.pt`` = ``{'epoch', 'state_dict'}`` of the
key encoder alone, ACL's names; ``model.pt`` = the momentum pair under ``encoder_q.`` / ``encoder_k.``)
    acl's key map and ignored prefixes; ``encoder_k.`` preferred, ``encoder_q.*`` ignored.
dynacl++ (LPAFT.py's ``model.pt``: single-BN models/resnet.py ResNet-18, torchvision names, the
adversarial route's statistics (bnNameCnt 1), a pseudo-label linear head ``fc``)
    <bn>.<t> -> <bn>.branches.<branch>.<t>; layerN.0.downsample.0 / .1 -> layerN.0.shortcut.0 / .1;
    its one BN set is reported as branch 'pgd'; normalize.mean / std as acl; ignored: ``fc.*``.
dynacl++-dual (LPAFT_AFF.py's ``model.pt``: dual-BN ResNet-18 with a linear head ``fc``)
    acl's key map, i: 0 = normal, 1 = pgd; ignored: ``fc.*``.
robustssl (GodXuxilie/RobustSSL_Benchmark, Vanilla_Finetuning/utils.py ``get_model``: the state
dict is under ``state_dict_dual``, ``state_dict`` or ``model``, else the file itself; the
encoders it releases keep their authors' names). The family is detected from the keys:
``bn_list.2`` or AdvCL heads -> advcl; ``encoder_k.``/``bn_list``/``normalize.`` -> acl;
kuangliu ``shortcut.`` -> rocl; single-BN ``downsample.0.`` with ``normalize.`` -> dynacl++;
solo-learn ``backbone.`` -> deacl, loaded into DeACL's padding-2
stem (RobustSSL loads it into a padding-1 stem silently: the pitfall behind its DeACL cells).
deacl (pantheon5100/DeACL: a Lightning checkpoint ``{'state_dict': ...}`` of ``mocov2_kd_at``; its
``adv_finetune.py`` keeps the ``backbone.`` keys and loads them strictly into its padding-2 model)
    backbone.<path> -> <path> in DeACL's ResNet-18 (arch ``resnet18_deacl``): torchvision names,
    layerN.0.downsample.0/1 -> layerN.0.shortcut.0/1, <bn>.<t> -> <bn>.branches.normal.<t>;
    backbone.normalize.mean / std -> normalize (CIFAR-10 statistics in the released model class).
    ignored: ``momentum_backbone.*`` (the frozen SimCLR teacher), ``classifier.*``,
    ``classifier_adv.*`` (online linear probes on detached features).
deacl-teacher (the solo-learn SimCLR checkpoint DeACL distils from, e.g. ``simclr-cifar10-b30xch14-ep=999.ckpt``)
    the same ``backbone.`` names without normalisation buffers: DeACL's model class supplies
    CIFAR-10 statistics in the model, and so does this format. ignored: ``projector.*``,
    ``classifier.*``, ``momentum_*`` (a MoCo teacher's EMA copies).

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.engine.checkpoint_keys import LAYOUTS, LIST_LIMIT, CheckpointError, expected_keys, key_list, load_strict
from bench.engine.models import (
    CIFAR10_MEAN,
    CIFAR10_STD,
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

FORMATS = (
    "bench",
    "robustssl",
    "advcl",
    "rocl",
    "acl",
    "dynacl",
    "dynacl++",
    "dynacl++-dual",
    "deacl",
    "deacl-teacher",
)
ALL_BRANCHES = "all"
BENCH_MARKER = "acl-bench"
DATA_PARALLEL_PREFIX = "module."
_BN_LIST_INDEX = re.compile(r"\.bn_list\.(\d+)\.")
ARCH_NOTES = {
    "resnet18": "our CIFAR ResNet-18 (3×3 stride-1 padding-1 stem, no max-pool, widths 64-512)",
    "resnet18_deacl": "DeACL's CIFAR ResNet-18 (3×3 stride-1 padding-2 stem, no max-pool, widths 64-512)",
}


@dataclass(frozen=True)
class ExternalFormat:
    """How one released code base names a CIFAR ResNet-18 encoder (see the module docstring)."""

    name: str
    containers: tuple[str, ...]  # dict keys that may hold the state dict, tried in order
    bn_names: tuple[str, ...]  # bn_list index -> our branch name
    default_branch: str
    layout: str  # 'multi_bn' (torchvision + bn_list) | 'kuangliu' (one plain BN) | 'torchvision' (one plain BN)
    normalized: bool  # the checkpoint carries normalize.mean / normalize.std buffers
    ignored: tuple[str, ...]  # key prefixes dropped on purpose
    encoder_prefixes: tuple[str, ...] = ()  # alternative sub-model prefixes, preferred first
    arch: str = "resnet18"  # the bench.engine.models encoder it was trained as (the stem is part of it)
    fixed_normalization: str = ""  # bench.engine.models.NORMALIZATIONS key the released model class adds itself


ACL = ExternalFormat(
    name="acl",
    containers=("state_dict", "P_state"),
    bn_names=("normal", "pgd"),
    default_branch="pgd",
    layout="multi_bn",
    normalized=True,
    ignored=("fc.",),
    encoder_prefixes=("encoder_k.", "encoder_q."),
)
ADVCL = ExternalFormat(
    name="advcl",
    containers=("model", "state_dict"),
    bn_names=("normal", "pgd", "pgd_ce"),
    default_branch="pgd",
    layout="multi_bn",
    normalized=False,
    ignored=("head_proj.", "head_pred.", "head_ce.", "fc_002.", "fc_010.", "fc_050.", "fc_100.", "fc_500."),
)
ROCL = ExternalFormat(
    name="rocl",
    containers=("model",),
    bn_names=("normal",),
    default_branch="normal",
    layout="kuangliu",
    normalized=False,
    ignored=("linear.", "linear_1.", "linear_2."),
)
DYNACL = ExternalFormat(
    name="dynacl",
    containers=("state_dict",),
    bn_names=("normal", "pgd"),
    default_branch="pgd",
    layout="multi_bn",
    normalized=True,
    ignored=("fc.",),
    encoder_prefixes=("encoder_k.", "encoder_q."),
)
DYNACL_PLUS_PLUS = ExternalFormat(
    name="dynacl++",
    containers=("state_dict",),
    bn_names=("pgd",),
    default_branch="pgd",
    layout="torchvision",
    normalized=True,
    ignored=("fc.",),
)
DYNACL_PLUS_PLUS_DUAL = ExternalFormat(
    name="dynacl++-dual",
    containers=("state_dict",),
    bn_names=("normal", "pgd"),
    default_branch="pgd",
    layout="multi_bn",
    normalized=True,
    ignored=("fc.",),
)
DEACL = ExternalFormat(
    name="deacl",
    containers=("state_dict",),
    bn_names=("normal",),
    default_branch="normal",
    layout="torchvision",
    normalized=True,
    ignored=("momentum_backbone.", "classifier.", "classifier_adv."),
    encoder_prefixes=("backbone.",),
    arch="resnet18_deacl",
)
DEACL_TEACHER = ExternalFormat(
    name="deacl-teacher",
    containers=("state_dict",),
    bn_names=("normal",),
    default_branch="normal",
    layout="torchvision",
    normalized=False,
    ignored=("projector.", "classifier.", "momentum_"),
    encoder_prefixes=("backbone.",),
    arch="resnet18_deacl",
    fixed_normalization="cifar10",
)
EXTERNAL = {
    spec.name: spec
    for spec in (ACL, ADVCL, ROCL, DYNACL, DYNACL_PLUS_PLUS, DYNACL_PLUS_PLUS_DUAL, DEACL, DEACL_TEACHER)
}
ROBUSTSSL_CONTAINERS = ("state_dict_dual", "state_dict", "model")


# --------------------------------------------------------------------------- reading


def _read(path_or_state_dict: str | os.PathLike | Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """The checkpoint object and a label for messages; files load with the weights-only unpickler.

    Released checkpoints come from the internet: a full unpickler would run arbitrary code.
    Every format here is tensors, numbers and strings, which the safe unpickler reads.
    """
    if isinstance(path_or_state_dict, Mapping):
        return path_or_state_dict, "<state dict>"
    path = Path(path_or_state_dict)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the unpickler raises several types; all mean the same here
        if not _looks_like_torch_file(path):
            raise CheckpointError(
                f"checkpoint {path} is not a torch.save file (neither a zip archive nor a "
                "pickle): allowed files written by torch.save"
            ) from error
        raise CheckpointError(
            f"checkpoint {path} could not be read with torch.load(weights_only=True): {_first_line(error)}. "
            "If you trust the file, load it yourself with weights_only=False and pass the dict to load_encoder."
        ) from error
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(loaded).__name__}, not a dict or state dict")
    return loaded, str(path)


def _looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (``PK``) or, in the legacy format, a pickle (protocol byte ``0x80``).
    Anything else (a text file, an empty file) gets a plain reason instead of the unpickler's (e.g. '101')."""
    with open(path, "rb") as stream:
        head = stream.read(2)
    return head == b"PK" or head[:1] == b"\x80"


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _unwrap(checkpoint: Mapping[str, Any], containers: Sequence[str], label: str) -> tuple[dict, dict]:
    """(state dict, scalar metadata): the first container key present, else a flat tensor dict."""
    for key in containers:
        if isinstance(checkpoint.get(key), Mapping):
            meta = {name: value for name, value in checkpoint.items() if isinstance(value, (int, float, str))}
            return dict(checkpoint[key]), meta
    if checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        return dict(checkpoint), {}
    raise CheckpointError(
        f"{label}: no state dict found: expected one of the keys {list(containers)} or a flat dict of tensors; "
        f"found keys {sorted(map(str, checkpoint))[:LIST_LIMIT]}"
    )


def _renamed(pairs: Iterable[tuple[str, torch.Tensor]], label: str) -> dict[str, torch.Tensor]:
    """A dict from renamed pairs; two tensors landing on one name would silently drop one."""
    renamed: dict[str, torch.Tensor] = {}
    for key, value in pairs:
        if key in renamed:
            raise CheckpointError(f"{label}: two tensors map to {key!r} once prefixes are removed")
        renamed[key] = value
    return renamed


def _strip_data_parallel(state: dict[str, torch.Tensor], label: str) -> tuple[dict[str, torch.Tensor], str]:
    """Drop nn.DataParallel / DDP's ``module.`` prefix: wrapping is never part of a format."""
    if not any(key.startswith(DATA_PARALLEL_PREFIX) for key in state):
        return state, ""
    pairs = ((key.removeprefix(DATA_PARALLEL_PREFIX), value) for key, value in state.items())
    return _renamed(pairs, label), DATA_PARALLEL_PREFIX


def _select_submodel(
    state: dict, prefixes: Sequence[str], ignored_prefixes: Sequence[str], label: str, shown_prefix: str
) -> tuple[dict, str, list[str]]:
    """Keep the preferred sub-model (DynACL's ``encoder_k.``, DeACL's ``backbone.``), prefix removed.

    Keys outside it are ignored when they belong to another sub-model or start with an ignored
    prefix (DeACL's teacher ``momentum_backbone.``); any other key outside it is an error.
    """
    present = [prefix for prefix in prefixes if any(key.startswith(prefix) for key in state)]
    if not present:
        return state, "", []
    chosen = present[0]
    outside = [key for key in state if not key.startswith(chosen)]
    stray = [key for key in outside if not key.startswith((*prefixes, *ignored_prefixes))]
    if stray:
        raise CheckpointError(
            "\n".join(
                [
                    f"{label}: {len(stray)} keys outside the encoder {chosen!r} are not known",
                    *key_list("unexpected", [shown_prefix + key for key in stray]),
                ]
            )
        )
    kept = ((key.removeprefix(chosen), value) for key, value in state.items() if key.startswith(chosen))
    return _renamed(kept, label), chosen, outside


# --------------------------------------------------------------------------- branches


def _resolve_branches(requested: str | None, available: Sequence[str], default: str, label: str) -> list[str]:
    """The checkpoint branches to load: the requested one, the default, or all of them."""
    if requested == ALL_BRANCHES:
        return list(available)
    if requested is None:
        if default in available:
            return [default]
        if len(available) == 1:
            return list(available)
        raise CheckpointError(f"{label}: default branch {default!r} is absent: pass branch= one of {list(available)}")
    if requested not in available:
        raise CheckpointError(
            f"{label}: branch={requested!r} is not in this checkpoint: allowed {[*available, ALL_BRANCHES]}"
        )
    return [requested]


def _branch_map(selected: Sequence[str], keep_names: bool) -> dict[str, str]:
    """Returned-model branch -> checkpoint branch: one branch becomes 'normal', 'all' keeps names."""
    return {name: name for name in selected} if keep_names else {"normal": selected[0]}


def _routing(selected: Sequence[str], default: str, keep_names: bool) -> tuple[str, str]:
    """(branch to route with in the returned model, the checkpoint's name for it)."""
    if not keep_names:
        return "normal", selected[0]
    chosen = default if default in selected else selected[0]
    return chosen, chosen


def _normalization_label(mean: torch.Tensor, std: torch.Tensor) -> str:
    imagenet = torch.allclose(mean.flatten(), torch.tensor(IMAGENET_MEAN), atol=1e-4) and torch.allclose(
        std.flatten(), torch.tensor(IMAGENET_STD), atol=1e-4
    )
    cifar10 = torch.allclose(mean.flatten(), torch.tensor(CIFAR10_MEAN), atol=1e-4) and torch.allclose(
        std.flatten(), torch.tensor(CIFAR10_STD), atol=1e-4
    )
    return "imagenet" if imagenet else "cifar10" if cifar10 else "custom"


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
    state, encoder_prefix, prefix_ignored = _select_submodel(state, spec.encoder_prefixes, spec.ignored, where, prefix)
    available = _available_external_branches(spec, state)
    selected = _resolve_branches(branch, available, spec.default_branch, where)
    branch_map = _branch_map(selected, keep_names=branch == ALL_BRANCHES)
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
        normalization = _normalization_label(model.normalize.mean, model.normalize.std)
    routed, source_branch = _routing(selected, spec.default_branch, keep_names=branch == ALL_BRANCHES)
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
    stored, label = _read(path)
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
            f"classifier {label} does not match its recorded architecture: {_first_line(error)}"
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
    state, prefix = _strip_data_parallel(dict(checkpoint["model"]), label)
    available = list(checkpoint["bn_branches"])
    default = checkpoint.get("finetune_bn") or available[0]
    selected = _resolve_branches(branch, available, default, f"bench checkpoint {label}")
    branch_map = _branch_map(selected, keep_names=branch == ALL_BRANCHES)
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
    routed, source_branch = _routing(selected, default, keep_names=branch == ALL_BRANCHES)
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
    checkpoint, label = _read(path_or_state_dict)
    if format == "bench":
        return _load_bench(checkpoint, label, branch, arch)
    containers = ROBUSTSSL_CONTAINERS if format == "robustssl" else EXTERNAL[format].containers
    state, meta = _unwrap(checkpoint, containers, f"{format} checkpoint {label}")
    state, prefix = _strip_data_parallel(state, f"{format} checkpoint {label}")
    spec = _detect_robustssl_family(state, label) if format == "robustssl" else EXTERNAL[format]
    if arch not in (None, spec.arch):
        raise CheckpointError(
            f"{format} checkpoint {label} holds {ARCH_NOTES[spec.arch]}: arch={arch!r} is invalid (the weights would "
            f"load into a different function without a shape error): allowed {spec.arch!r}"
        )
    return _load_external(spec, state, meta, label, branch, format, prefix)
