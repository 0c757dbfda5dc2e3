"""Key names and strict matching for checkpoints: our placeholder keys, the released layouts, errors.

Every released loader uses ``load_state_dict(strict=False)`` and only logs what it skipped; here a
checkpoint's keys are mapped from ours (one BatchNorm branch at a time, ``branches.@`` standing for
the branch) to each released layout (``LAYOUTS``: ACL/AdvCL's ``bn_list``, RoCL's kuangliu names,
torchvision's), and every key is then loaded, dropped on purpose or reported (``load_strict``).
The formats themselves, and what each drops, are in ``bench.engine.checkpoints``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from bench.errors import CheckpointError

BRANCH_KEY = re.compile(r"\.branches\.([^.]+)\.")
LIST_LIMIT = 40  # keys shown in an error message


def multi_bn_name(placeholder_key: str, branch_index: int | None) -> str:
    """Ours -> ACL/AdvCL names (Downsample_multiple.conv/.bn, batch_norm_multiple.bn_list).

    'encoder.layer2.0.shortcut.1.branches.@.weight', 1 -> 'layer2.0.downsample.bn.bn_list.1.weight'.
    """
    name = placeholder_key.removeprefix("encoder.")
    name = name.replace(".shortcut.0.", ".downsample.conv.").replace(".shortcut.1.", ".downsample.bn.")
    return name.replace(".branches.@.", f".bn_list.{branch_index}.")


def kuangliu_name(placeholder_key: str, branch_index: int | None) -> str:
    """Ours -> RoCL (kuangliu) names: 'encoder.layer1.0.bn1.branches.@.weight' -> 'layer1.0.bn1.weight'."""
    return placeholder_key.removeprefix("encoder.").replace(".branches.@.", ".")


def torchvision_name(placeholder_key: str, branch_index: int | None) -> str:
    """Ours -> torchvision (DeACL, solo-learn; DYNACL models/resnet.py).

    'encoder.layer2.0.shortcut.1.branches.@.weight' -> 'layer2.0.downsample.1.weight'.
    """
    return kuangliu_name(placeholder_key, branch_index).replace(".shortcut.", ".downsample.")


LAYOUTS: dict[str, Callable[[str, int | None], str]] = {
    "multi_bn": multi_bn_name,
    "kuangliu": kuangliu_name,
    "torchvision": torchvision_name,
}


def placeholder(key: str) -> tuple[str, str | None]:
    """('encoder.bn1.branches.@.weight', 'normal') for a BN tensor; (key, None) otherwise."""
    match = BRANCH_KEY.search(key)
    if match is None:
        return key, None
    return f"{key[: match.start()]}.branches.@.{key[match.end() :]}", match.group(1)


def expected_keys(
    target_keys: Sequence[str],
    branch_map: Mapping[str, str],
    other_branches: Sequence[str],
    source_name: Callable[[str, str], str],
) -> tuple[dict[str, str], set[str]]:
    """{source key: target key} for everything the model needs, and the other branches' source keys.

    ``branch_map`` maps each branch of the returned model to the checkpoint branch it is read
    from; ``source_name(placeholder_key, checkpoint_branch)`` spells a key the format's way.
    """
    expected: dict[str, str] = {}
    dropped: set[str] = set()
    for key in target_keys:
        template, branch = placeholder(key)
        if branch is None:
            expected[source_name(key, "")] = key
            continue
        expected[source_name(template, branch_map[branch])] = key
        dropped.update(source_name(template, other) for other in other_branches)
    return expected, dropped - set(expected)


# --------------------------------------------------------------------------- strict matching


def key_list(kind: str, keys: Sequence[str]) -> list[str]:
    shown = [f"  {kind}: {key}" for key in sorted(keys)[:LIST_LIMIT]]
    if len(keys) > LIST_LIMIT:
        shown.append(f"  {kind}: ... and {len(keys) - LIST_LIMIT} more")
    return shown


def check_keys(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, str],
    dropped: set[str],
    ignored_prefixes: Sequence[str],
    label: str,
    shown_prefix: str,
) -> list[str]:
    """Raise on any unmatched or missing key (listing them); return the keys ignored on purpose."""
    ignored = [key for key in state if key not in expected and key.startswith(tuple(ignored_prefixes))]
    unexpected = [key for key in state if key not in expected and key not in dropped and key not in ignored]
    missing = [key for key in expected if key not in state and not key.endswith("num_batches_tracked")]
    if unexpected or missing:
        summary = f"{label} does not match the model: {len(unexpected)} unexpected and {len(missing)} missing keys"
        if ignored_prefixes:
            summary += f" (ignored on purpose: {', '.join(p + '*' for p in ignored_prefixes)})"
        lines = key_list("unexpected", [shown_prefix + key for key in unexpected])
        lines += key_list("missing", [shown_prefix + key for key in missing])
        raise CheckpointError("\n".join([summary, *lines]))
    return sorted(shown_prefix + key for key in ignored)


def check_shapes(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, str],
    target: Mapping[str, torch.Tensor],
    label: str,
    architecture: str,
    shown_prefix: str,
) -> None:
    """Same key, other shape = other architecture (a 5×5 stem, other widths): say so, by tensor."""
    not_tensors = [shown_prefix + key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(
            "\n".join([f"{label}: the state dict holds non-tensor values", *key_list("not a tensor", not_tensors)])
        )
    wrong = []
    for source, key in expected.items():
        if source not in state:
            continue
        have, want = tuple(state[source].shape), tuple(target[key].shape)
        reshapeable = key.startswith("normalize.") and state[source].numel() == target[key].numel()
        if have != want and not reshapeable:
            wrong.append(f"  {shown_prefix}{source}: checkpoint {list(have)}, expected {list(want)}")
    if wrong:
        summary = f"{label} is a different architecture than {architecture}: {len(wrong)} tensors differ in shape"
        raise CheckpointError("\n".join([summary, *wrong]))


def load_strict(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, str],
    dropped: set[str],
    ignored_prefixes: Sequence[str],
    label: str,
    architecture: str,
    shown_prefix: str = "",
) -> list[str]:
    """Check keys and shapes, copy every expected tensor into ``model``; return the ignored keys."""
    ignored = check_keys(state, expected, dropped, ignored_prefixes, label, shown_prefix)
    target = model.state_dict()
    check_shapes(state, expected, target, label, architecture, shown_prefix)
    mapped = {
        key: state[source].reshape(target[key].shape) if source in state else torch.zeros_like(target[key])
        for source, key in expected.items()
    }
    model.load_state_dict(mapped, strict=True)
    return ignored
