"""Released DynACL and DynACL++ encoders load strictly, pinned by the released key sets.

tests/data/released_keys_dynacl.json holds the key names and shapes read off the released
model classes (PKU-ML/DYNACL): the momentum pair of train_DynACL.py, its key encoder alone,
LPAFT.py's single-BN ResNet-18 and LPAFT_AFF.py's dual-BN one. The state dicts below have
exactly those keys with random values, so the checks are independent of our own renaming.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.engine.checkpoints import CheckpointError, load_encoder

DATA = Path(__file__).parent / "data"
KEYS = json.loads((DATA / "released_keys_dynacl.json").read_text())


def released_state(kind: str, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in KEYS[kind].items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.startswith(("normalize.", "encoder_k.normalize.", "encoder_q.normalize.")):
            state[key] = torch.tensor([0.485, 0.456, 0.406] if key.endswith("mean") else [0.229, 0.224, 0.225])
        else:
            state[key] = torch.rand(shape, generator=generator) + (0.5 if key.endswith("running_var") else 0.0)
    return state


def test_the_key_encoder_file_has_acl_names():
    """Two independent readings of the released classes agree: DYNACL's encoder_k is ACL's model."""
    acl = json.loads((DATA / "released_keys.json").read_text())["acl"]
    assert KEYS["dynacl_encoder_k"] == acl
    assert set(KEYS["dynacl"]) == {f"{prefix}{key}" for prefix in ("encoder_q.", "encoder_k.") for key in acl}


@pytest.mark.parametrize("kind", ["dynacl", "dynacl_encoder_k"])
def test_dynacl_loads_the_key_encoder_pgd_branch(kind):
    state = released_state(kind)
    model, info = load_encoder({"epoch": 1000, "state_dict": state}, "dynacl")
    prefix = "encoder_k." if kind == "dynacl" else ""
    ours = model.encoder.state_dict()
    assert torch.equal(ours["conv1.weight"], state[f"{prefix}conv1.weight"])
    assert torch.equal(
        ours["layer3.0.shortcut.1.branches.normal.running_var"],
        state[f"{prefix}layer3.0.downsample.bn.bn_list.1.running_var"],
    )
    assert torch.equal(ours["layer1.1.bn2.branches.normal.weight"], state[f"{prefix}layer1.1.bn2.bn_list.1.weight"])
    assert (info["source_branch"], info["normalization"], info["epoch"]) == ("pgd", "imagenet", 1000)
    assert f"{prefix}fc.fc1.weight" in info["ignored_keys"]
    if kind == "dynacl":
        assert info["encoder_prefix"] == "encoder_k." and "encoder_q.conv1.weight" in info["ignored_keys"]
    clean, _ = load_encoder({"state_dict": state}, "dynacl", branch="normal")
    assert torch.equal(
        clean.encoder.state_dict()["bn1.branches.normal.running_mean"], state[f"{prefix}bn1.bn_list.0.running_mean"]
    )


def test_dynacl_plus_plus_single_bn_maps_torchvision_names():
    state = released_state("dynacl++_single")
    model, info = load_encoder({"epoch": 25, "state_dict": state}, "dynacl++")
    ours = model.encoder.state_dict()
    assert torch.equal(ours["layer2.0.shortcut.0.weight"], state["layer2.0.downsample.0.weight"])
    assert torch.equal(
        ours["layer2.0.shortcut.1.branches.normal.running_mean"], state["layer2.0.downsample.1.running_mean"]
    )
    assert torch.equal(ours["bn1.branches.normal.bias"], state["bn1.bias"])
    assert (info["branch"], info["source_branch"], info["available_branches"]) == ("normal", "pgd", ["pgd"])
    assert info["ignored_keys"] == ["fc.bias", "fc.weight"]
    with pytest.raises(CheckpointError, match="branch='normal' is not in this checkpoint: allowed \\['pgd', 'all'\\]"):
        load_encoder({"state_dict": state}, "dynacl++", branch="normal")
    detected, detected_info = load_encoder({"state_dict": state}, "robustssl")
    assert detected_info["family"] == "dynacl++"
    assert torch.equal(detected.encoder.state_dict()["conv1.weight"], state["conv1.weight"])


def test_dynacl_plus_plus_dual_bn_keeps_both_routes():
    state = released_state("dynacl++_dual")
    model, info = load_encoder({"state_dict": state}, "dynacl++-dual", branch="all")
    ours = model.encoder.state_dict()
    for index, name in enumerate(("normal", "pgd")):
        assert torch.equal(
            ours[f"layer4.1.bn1.branches.{name}.running_mean"], state[f"layer4.1.bn1.bn_list.{index}.running_mean"]
        )
    assert info["branch"] == "pgd" and info["ignored_keys"] == ["fc.bias", "fc.weight"]


@pytest.mark.parametrize(
    "kind, fmt", [("dynacl", "dynacl"), ("dynacl++_single", "dynacl++"), ("dynacl++_dual", "dynacl++-dual")]
)
def test_a_missing_or_foreign_key_is_an_error(kind, fmt):
    state = released_state(kind)
    missing = dict(state)
    del missing[("encoder_k." if kind == "dynacl" else "") + "layer2.0.conv1.weight"]  # the encoder that is loaded
    with pytest.raises(CheckpointError, match="layer2.0.conv1.weight"):
        load_encoder({"state_dict": missing}, fmt)
    with pytest.raises(CheckpointError, match="unexpected: .*predictor.weight"):
        load_encoder({"state_dict": {**state, "predictor.weight": torch.zeros(2)}}, fmt)


def test_single_bn_file_is_refused_by_the_dual_bn_format():
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_encoder({"state_dict": released_state("dynacl++_single")}, "dynacl++-dual")
