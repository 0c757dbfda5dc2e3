"""Reading a checkpoint file safely and choosing its BatchNorm branches: the steps every format shares
(``bench.engine.checkpoints``). Files are read with ``weights_only`` unpickling only."""

from __future__ import annotations

import os
import struct
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from bench.engine.checkpoint_keys import LIST_LIMIT, CheckpointError, key_list
from bench.engine.models import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD

ALL_BRANCHES = "all"
DATA_PARALLEL_PREFIX = "module."  # nn.DataParallel / DDP wrapping: not part of any format


def read_state(path_or_state_dict: str | os.PathLike | Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """The checkpoint object and a label for messages; files load with the weights-only unpickler.

    Released checkpoints come from the internet: a full unpickler would run arbitrary code.
    Every format here is tensors, numbers and strings, which the safe unpickler reads.
    """
    if isinstance(path_or_state_dict, Mapping):
        return path_or_state_dict, "<state dict>"
    path = Path(path_or_state_dict)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if file_format(path) == TORCHSCRIPT:
        raise CheckpointError(refuse_torchscript(path))
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the unpickler raises several types; all mean the same here
        if not looks_like_torch_file(path):
            raise CheckpointError(
                f"checkpoint {path} is not a torch.save file (neither a zip archive nor a "
                "pickle): allowed files written by torch.save"
            ) from error
        raise CheckpointError(
            f"checkpoint {path} could not be read with torch.load(weights_only=True): {first_line(error)}. "
            "If you trust the file, load it yourself with weights_only=False and pass the dict to load_encoder."
        ) from error
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(loaded).__name__}, not a dict or state dict")
    return loaded, str(path)


# What a file is, from its own bytes (never from its name or a sidecar): the one loader policy.
TORCH_ZIP, TORCHSCRIPT, PICKLE = "torch.save zip", "TorchScript", "pickle"
SAFETENSORS, UNKNOWN = "safetensors", "unknown"


def file_format(path: str | os.PathLike) -> str:
    """The format a weights file really has, read from its first bytes (and a zip's member names).

    A loader chosen from a file name or a sidecar can be lied to: a TorchScript archive named
    ``m.safetensors`` with a sidecar saying ``torchscript`` ran its ``__setstate__`` code when loaded
    (review 2, D1). Callers pick their loader from this answer and refuse ``TORCHSCRIPT`` unless told."""
    with open(path, "rb") as stream:
        head = stream.read(9)
    if head[:2] == b"PK":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):  # a damaged torch.save file: torch.load names the damage
            return TORCH_ZIP
        # torch.jit.save's archive holds code/ and constants.pkl under its root folder; torch.save's never does
        inner = {name.split("/", 2)[1] for name in names if name.count("/") >= 1}
        return TORCHSCRIPT if inner & {"code", "constants.pkl"} else TORCH_ZIP
    if head[:1] == b"\x80":
        return PICKLE
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 little-endian header length, then its JSON
        (header_length,) = struct.unpack("<Q", head[:8])
        if 0 < header_length <= os.path.getsize(path) - 8:
            return SAFETENSORS
    return UNKNOWN


def refuse_torchscript(path: str | os.PathLike) -> str:
    return (
        f"{path} is a TorchScript archive: loading it runs the code inside it, so it is refused "
        "(pass allow_torchscript=True only for a file you trust)"
    )


def looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (``PK``) or, in the legacy format, a pickle (protocol byte ``0x80``).
    Anything else (a text file, an empty file) gets a plain reason instead of the unpickler's (e.g. '101')."""
    return file_format(path) in (TORCH_ZIP, PICKLE)


def first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def unwrap(checkpoint: Mapping[str, Any], containers: Sequence[str], label: str) -> tuple[dict, dict]:
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


def renamed_keys(pairs: Iterable[tuple[str, torch.Tensor]], label: str) -> dict[str, torch.Tensor]:
    """A dict from renamed pairs; two tensors landing on one name would silently drop one."""
    renamed: dict[str, torch.Tensor] = {}
    for key, value in pairs:
        if key in renamed:
            raise CheckpointError(f"{label}: two tensors map to {key!r} once prefixes are removed")
        renamed[key] = value
    return renamed


def strip_data_parallel(state: dict[str, torch.Tensor], label: str) -> tuple[dict[str, torch.Tensor], str]:
    """Drop nn.DataParallel / DDP's ``module.`` prefix: wrapping is never part of a format."""
    if not any(key.startswith(DATA_PARALLEL_PREFIX) for key in state):
        return state, ""
    pairs = ((key.removeprefix(DATA_PARALLEL_PREFIX), value) for key, value in state.items())
    return renamed_keys(pairs, label), DATA_PARALLEL_PREFIX


def select_submodel(
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
    return renamed_keys(kept, label), chosen, outside


def resolve_branches(requested: str | None, available: Sequence[str], default: str, label: str) -> list[str]:
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


def branch_renames(selected: Sequence[str], keep_names: bool) -> dict[str, str]:
    """Returned-model branch -> checkpoint branch: one branch becomes 'normal', 'all' keeps names."""
    return {name: name for name in selected} if keep_names else {"normal": selected[0]}


def routing(selected: Sequence[str], default: str, keep_names: bool) -> tuple[str, str]:
    """(branch to route with in the returned model, the checkpoint's name for it)."""
    if not keep_names:
        return "normal", selected[0]
    chosen = default if default in selected else selected[0]
    return chosen, chosen


def normalization_label(mean: torch.Tensor, std: torch.Tensor) -> str:
    imagenet = torch.allclose(mean.flatten(), torch.tensor(IMAGENET_MEAN), atol=1e-4) and torch.allclose(
        std.flatten(), torch.tensor(IMAGENET_STD), atol=1e-4
    )
    cifar10 = torch.allclose(mean.flatten(), torch.tensor(CIFAR10_MEAN), atol=1e-4) and torch.allclose(
        std.flatten(), torch.tensor(CIFAR10_STD), atol=1e-4
    )
    return "imagenet" if imagenet else "cifar10" if cifar10 else "custom"
