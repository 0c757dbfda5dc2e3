"""Checkpoint import/export: every released format, strictness, atomic writes, export.

Each released format is simulated by building our ResNet-18 and renaming its keys the way
the original code names them (the literal key names asserted below come from the released
model files), so the test checks the key maps against the released names, not against
the loader's own renaming.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.engine.checkpoints import CheckpointError, EncoderCheckpoint, load_encoder
from bench.engine.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Classifier,
    MultiBatchNorm,
    ResNet18,
    build_contrastive_model,
)
from bench.runs.external import export_classifier, load_robustbench_model
from bench.store.atomic import save_torch_atomic

ACL_BN = ("normal", "pgd")  # train_simCLR.py: bn_names = ['normal', 'pgd']
ADVCL_BN = ("normal", "pgd", "pgd_ce")  # pretraining_advCL.py: bn_names = ['normal', 'pgd', 'pgd_ce']


def randomise_bn(model: nn.Module) -> None:
    """Branch i of every BN gets running_mean == i + 1 (so a wrong branch is visible) and random affine/var."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, MultiBatchNorm):
                for index, bn in enumerate(module.branches.values()):
                    bn.running_mean.fill_(float(index + 1))
                    bn.running_var.uniform_(0.5, 2.0)
                    bn.weight.uniform_(0.5, 1.5)
                    bn.bias.normal_()
                    bn.num_batches_tracked.fill_(7)


def reference_encoder(branches: tuple[str, ...], seed: int = 0) -> ResNet18:
    torch.manual_seed(seed)
    encoder = ResNet18(branches=branches)
    randomise_bn(encoder)
    return encoder.eval()


def multi_bn_names(state: dict, bn_names: tuple[str, ...]) -> dict:
    """Ours -> ACL/AdvCL (resnet_multi_bn.py / resnet_cifar_multibn_ensembleFC.py): Downsample_multiple
    holds .conv and .bn, batch_norm_multiple holds the ModuleList .bn_list indexed by bn_names order."""
    renamed = {}
    for key, value in state.items():
        name = key.replace("shortcut.0.", "downsample.conv.").replace("shortcut.1.", "downsample.bn.")
        for index, branch in enumerate(bn_names):
            name = name.replace(f".branches.{branch}.", f".bn_list.{index}.")
        renamed[name] = value
    return renamed


def kuangliu_names(state: dict) -> dict:
    """Ours -> RoCL src/models/resnet.py: plain BatchNorm2d at bn1, bn2, shortcut.1."""
    return {key.replace(".branches.normal.", "."): value for key, value in state.items()}


def acl_state(seed: int = 0) -> tuple[ResNet18, dict]:
    encoder = reference_encoder(ACL_BN, seed)
    state = multi_bn_names(encoder.state_dict(), ACL_BN)
    state["normalize.mean"] = torch.tensor(IMAGENET_MEAN)  # NormalizeByChannelMeanStd buffers, shape [3]
    state["normalize.std"] = torch.tensor(IMAGENET_STD)
    for layer in ("fc1", "fc2", "fc3"):  # proj_head installed as model.fc
        state[f"fc.{layer}.weight"] = torch.randn(4, 4)
    state["fc.fc1.bias"] = torch.randn(4)
    for layer in ("bn1", "bn2", "bn3"):
        for index in range(2):
            state[f"fc.{layer}.bn_list.{index}.running_mean"] = torch.zeros(4)
    return encoder, state


def advcl_state(seed: int = 1, prefix: str = "module.") -> tuple[ResNet18, dict]:
    encoder = reference_encoder(ADVCL_BN, seed)
    state = multi_bn_names(encoder.state_dict(), ADVCL_BN)
    state.update(
        {
            "head_proj.0.weight": torch.randn(4, 4),
            "head_proj.1.running_mean": torch.zeros(4),
            "head_proj.3.weight": torch.randn(2, 4),
            "head_pred.0.weight": torch.randn(4, 4),
            "head_ce.3.bias": torch.zeros(10),
            "fc_002.weight": torch.randn(2, 4),
            "fc_500.bias": torch.zeros(500),
        }
    )
    return encoder, {prefix + key: value for key, value in state.items()}


def rocl_state(seed: int = 2) -> tuple[ResNet18, dict]:
    encoder = reference_encoder(("normal",), seed)
    return encoder, {"module." + key: value for key, value in kuangliu_names(encoder.state_dict()).items()}


def assert_loaded(model, reference: ResNet18, source_branch: str) -> None:
    """Every tensor of the returned encoder equals the reference's, read from ``source_branch``."""
    reference_state = reference.state_dict()
    for key, value in model.encoder.state_dict().items():
        source = key.replace(".branches.normal.", f".branches.{source_branch}.")
        assert torch.equal(value, reference_state[source]), key


# --------------------------------------------------------------------------- ACL


def test_acl_key_names_follow_the_released_model():
    _, state = acl_state()
    for key in (
        "conv1.weight",
        "bn1.bn_list.1.running_mean",
        "layer2.0.downsample.conv.weight",
        "layer2.0.downsample.bn.bn_list.1.running_var",
        "layer4.1.bn2.bn_list.0.weight",
    ):
        assert key in state


def test_acl_loads_pgd_branch_and_imagenet_normalisation(tmp_path):
    reference, state = acl_state()
    path = tmp_path / "ACL_DS.pt"
    torch.save({"epoch": 1000, "state_dict": state, "optim": {}}, path)
    model, info = load_encoder(path, "acl")
    assert_loaded(model, reference, "pgd")
    assert model.bn_names() == ("normal",)
    assert float(model.encoder.layer3[0].shortcut[1].branches["normal"].running_mean[0]) == 2.0  # pgd = index 1
    assert torch.allclose(model.normalize.mean, torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
    assert torch.allclose(model.normalize.std, torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
    assert info["normalization"] == "imagenet" and info["branch"] == "normal" and info["source_branch"] == "pgd"
    assert info["epoch"] == 1000 and isinstance(model.projector, nn.Identity)
    assert "fc.fc1.weight" in info["ignored_keys"]
    image = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        expected = _reference_features(reference, (image - model.normalize.mean) / model.normalize.std, "pgd")
        assert torch.allclose(model.eval().features(image), expected, atol=1e-5)


def _reference_features(reference: ResNet18, x: torch.Tensor, branch: str) -> torch.Tensor:
    for module in reference.modules():
        if isinstance(module, MultiBatchNorm):
            module.branch = branch
    return reference(x)


def test_acl_branch_choice_selects_statistics():
    reference, state = acl_state()
    model, info = load_encoder({"state_dict": state}, "acl", branch="normal")
    assert_loaded(model, reference, "normal")
    assert float(model.encoder.bn1.branches["normal"].running_mean[0]) == 1.0
    both, info = load_encoder({"state_dict": state}, "acl", branch="all")
    assert both.bn_names() == ACL_BN and info["branch"] == "pgd"
    assert float(both.encoder.layer1[0].bn2.branches["pgd"].running_mean[0]) == 2.0
    assert torch.equal(
        both.encoder.state_dict()["layer1.0.bn2.branches.normal.weight"],
        reference.state_dict()["layer1.0.bn2.branches.normal.weight"],
    )
    with pytest.raises(ValueError, match="pgd_ce"):
        load_encoder({"state_dict": state}, "acl", branch="pgd_ce")


def test_dynacl_key_encoder_is_loaded_and_query_encoder_ignored():
    key_reference, key_state = acl_state(seed=3)
    _, query_state = acl_state(seed=4)
    state = {f"encoder_k.{k}": v for k, v in key_state.items()} | {f"encoder_q.{k}": v for k, v in query_state.items()}
    model, info = load_encoder({"state_dict": state}, "acl")
    assert_loaded(model, key_reference, "pgd")
    assert info["encoder_prefix"] == "encoder_k." and "encoder_q.conv1.weight" in info["ignored_keys"]


# --------------------------------------------------------------------------- AdvCL / A-InfoNCE


@pytest.mark.e2e
def test_advcl_strips_module_and_maps_three_branches(tmp_path):
    reference, state = advcl_state()
    assert "module.layer2.0.downsample.bn.bn_list.2.running_mean" in state
    path = tmp_path / "epoch_400.ckpt"
    torch.save({"model": state, "epoch": 400, "rng_state": torch.get_rng_state()}, path)
    model, info = load_encoder(path, "advcl")
    assert_loaded(model, reference, "pgd")
    assert isinstance(model.normalize, nn.Identity) and info["normalization"] == "none"
    assert info["stripped_prefix"] == "module." and info["available_branches"] == list(ADVCL_BN)
    assert {"module.head_proj.0.weight", "module.fc_002.weight"} <= set(info["ignored_keys"])
    ce_model, _ = load_encoder(path, "advcl", branch="pgd_ce")
    assert_loaded(ce_model, reference, "pgd_ce")
    assert float(ce_model.encoder.layer4[1].bn1.branches["normal"].running_mean[0]) == 3.0


# --------------------------------------------------------------------------- RoCL


def test_rocl_kuangliu_names_single_bn(tmp_path):
    reference, state = rocl_state()
    assert {"module.layer2.0.shortcut.1.running_mean", "module.layer1.0.bn1.weight"} <= set(state)
    path = tmp_path / "ckpt.t7rocl_0"
    torch.save(
        {"epoch": 999, "acc": 1.5, "model": state, "optimizer_state": {}, "rng_state": torch.get_rng_state()}, path
    )
    model, info = load_encoder(path, "rocl")
    assert_loaded(model, reference, "normal")
    assert isinstance(model.normalize, nn.Identity) and info["source_branch"] == "normal"
    with pytest.raises(ValueError, match="branch='pgd'"):
        load_encoder(path, "rocl", branch="pgd")


# --------------------------------------------------------------------------- RobustSSL


def test_robustssl_detects_the_family():
    acl_reference, acl = acl_state()
    model, info = load_encoder({"state_dict": acl}, "robustssl")
    assert info["family"] == "acl" and info["normalization"] == "imagenet"
    assert_loaded(model, acl_reference, "pgd")
    advcl_reference, advcl = advcl_state(prefix="")  # RobustSSL's AdvCL loader expects no prefix
    model, info = load_encoder({"state_dict_dual": advcl}, "robustssl")
    assert info["family"] == "advcl" and info["normalization"] == "none"
    assert_loaded(model, advcl_reference, "pgd")


def test_robustssl_loads_deacl_into_its_padding_two_stem():
    """RobustSSL loads DeACL.pt into a padding-1 ResNet (strict=False, same shapes): here it keeps padding 2."""
    state = released_state("deacl")
    model, info = load_encoder({"state_dict": state}, "robustssl")
    assert info["family"] == "deacl" and info["arch"] == "resnet18_deacl" and model.encoder.conv1.padding == (2, 2)
    with pytest.raises(CheckpointError, match=r"padding-2 stem.*arch='resnet18' is invalid.*allowed 'resnet18_deacl'"):
        load_encoder({"state_dict": state}, "robustssl", arch="resnet18")


# --------------------------------------------------------------------------- our format


def bench_checkpoint(arch: str = "resnet18") -> tuple[nn.Module, dict]:
    torch.manual_seed(5)
    model = build_contrastive_model(arch, ACL_BN, "acl", normalization="imagenet")
    randomise_bn(model)
    model.heads["k10"] = nn.Linear(model.feature_dim, 10)
    return model, EncoderCheckpoint(
        model=model.state_dict(),
        method="acl",
        arch=arch,
        bn_branches=ACL_BN,
        projector="acl",
        normalization="imagenet",
        finetune_bn="pgd",
        in_channels=3,
        run_id="acl-test",
    ).to_state()


@pytest.mark.e2e
def test_bench_roundtrip_selects_finetune_branch_everywhere(tmp_path):
    original, checkpoint = bench_checkpoint()
    path = save_torch_atomic(checkpoint, tmp_path / "encoder.pt")
    model, info = load_encoder(path, "bench")
    assert info["branch"] == "normal" and info["source_branch"] == "pgd" and info["run_id"] == "acl-test"
    assert float(model.projector.bn3.branches["normal"].running_mean[0]) == 2.0  # projector's pgd BN too
    image = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.eval().features(image), original.eval().features(image, "pgd"), atol=1e-5)
    full, info = load_encoder(path, "bench", branch="all")
    assert info["branch"] == "pgd" and full.bn_names() == ACL_BN
    assert full.state_dict().keys() == original.state_dict().keys()
    assert all(torch.equal(value, original.state_dict()[key]) for key, value in full.state_dict().items())


def test_bench_small_cnn_and_arch_mismatch():
    _, checkpoint = bench_checkpoint("small_cnn")
    model, info = load_encoder(checkpoint, "bench")
    assert info["arch"] == "small_cnn" and model.feature_dim == 64
    with pytest.raises(ValueError, match="small_cnn"):
        load_encoder(checkpoint, "bench", arch="resnet18")


def test_bench_format_on_a_released_file_names_missing_fields():
    _, state = acl_state()
    with pytest.raises(ValueError, match="lacks the fields"):
        load_encoder({"epoch": 1, "state_dict": state}, "bench")


# --------------------------------------------------------------------------- strictness


def released(fmt: str) -> dict:
    if fmt == "acl":
        return {"state_dict": acl_state()[1]}
    if fmt == "advcl":
        return {"model": advcl_state()[1]}
    return {"model": rocl_state()[1]}


@pytest.mark.parametrize(
    "fmt, key",
    [
        ("acl", "layer3.0.downsample.bn.bn_list.1.running_mean"),
        ("acl", "normalize.std"),
        ("advcl", "module.layer1.1.bn2.bn_list.1.weight"),
        ("rocl", "module.layer2.0.shortcut.0.weight"),
    ],
)
def test_missing_key_is_an_error_listing_it(fmt, key):
    checkpoint = released(fmt)
    state = next(iter(checkpoint.values()))
    del state[key]
    with pytest.raises(ValueError, match="missing") as error:
        load_encoder(checkpoint, fmt)
    summary, *listed = str(error.value).splitlines()
    assert "0 unexpected and 1 missing keys" in summary
    assert listed == [f"  missing: {key}"]


@pytest.mark.parametrize(
    "fmt, key",
    [
        ("acl", "layer5.0.conv1.weight"),
        ("acl", "bn1.bn_list.2.running_mean"),  # a third branch is not ACL's
        ("advcl", "module.linear_contrast.weight"),
        ("advcl", "module.normalize.mean"),  # AdvCL has no normalisation layer
        ("rocl", "module.layer1.0.bn1.bn_list.0.weight"),
    ],
)
def test_unexpected_key_is_an_error_listing_it(fmt, key):
    checkpoint = released(fmt)
    next(iter(checkpoint.values()))[key] = torch.zeros(3)
    with pytest.raises(ValueError, match="1 unexpected") as error:
        load_encoder(checkpoint, fmt)
    summary, *listed = str(error.value).splitlines()
    assert "1 unexpected and 0 missing keys" in summary
    assert listed == [f"  unexpected: {key}"]


def test_missing_num_batches_tracked_is_accepted():
    reference, state = acl_state()
    state = {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}
    model, _ = load_encoder({"state_dict": state}, "acl")
    assert torch.equal(model.encoder.conv1.weight, reference.conv1.weight)


def test_wrong_stem_shape_is_an_architecture_error():
    _, state = acl_state()
    state["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    with pytest.raises(ValueError, match="different architecture") as error:
        load_encoder({"state_dict": state}, "acl")
    assert "conv1.weight: checkpoint [64, 3, 5, 5], expected [64, 3, 3, 3]" in str(error.value)


def test_unknown_format_and_arch():
    with pytest.raises(
        ValueError,
        match=r"'simclr'.*allowed \['bench', 'robustssl', 'advcl', 'rocl', 'acl', 'dynacl', "
        r"'dynacl\+\+', 'dynacl\+\+-dual', 'deacl', 'deacl-teacher'\]",
    ):
        load_encoder({}, "simclr")
    with pytest.raises(ValueError, match="ResNet-18"):
        load_encoder(released("rocl"), "rocl", arch="small_cnn")
    assert issubclass(CheckpointError, ValueError)


def test_missing_file_and_unsafe_pickle(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_encoder(tmp_path / "absent.pt", "acl")
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": {}, "args": Unsafe()}, path)
    with pytest.raises(ValueError, match="weights_only"):
        load_encoder(path, "acl")


class Unsafe:
    """An arbitrary Python object: the weights-only unpickler must refuse it."""


# --------------------------------------------------------------------------- atomic writes


class ExplodingPickle:
    """Raises while torch.save is halfway through writing (after the tensors before it)."""

    def __reduce__(self):
        raise RuntimeError("disk full (simulated)")


def test_atomic_save_leaves_no_temp_file(tmp_path):
    path = save_torch_atomic({"step": 3, "w": torch.ones(2)}, tmp_path / "run" / "pretrain.ckpt")
    assert sorted(p.name for p in path.parent.iterdir()) == ["pretrain.ckpt"]
    assert torch.load(path)["step"] == 3


def test_interrupted_save_keeps_previous_file(tmp_path):
    path = tmp_path / "pretrain.ckpt"
    save_torch_atomic({"step": 1, "w": torch.ones(4)}, path)
    with pytest.raises(RuntimeError, match="disk full"):
        save_torch_atomic({"step": 2, "w": torch.zeros(1000), "boom": ExplodingPickle()}, path)
    assert torch.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["pretrain.ckpt"]


# --------------------------------------------------------------------------- export


@pytest.mark.e2e
@pytest.mark.filterwarnings("ignore:.*torch.jit.*:FutureWarning")
def test_export_reloads_with_identical_logits(tmp_path):
    torch.manual_seed(6)
    model = build_contrastive_model("resnet18", ACL_BN, "acl", normalization="imagenet")
    randomise_bn(model)
    classifier = Classifier(model, 10, "pgd").train()
    path = export_classifier(classifier, tmp_path / "export" / "acl_aff.pt")
    assert classifier.training  # the caller's module is untouched
    assert [p.name for p in path.parent.iterdir()] == ["acl_aff.pt"]
    loaded = torch.jit.load(str(path), map_location="cpu")
    assert isinstance(loaded, nn.Module) and not loaded.training
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(images), classifier.eval()(images))
    images.requires_grad_(True)
    loaded(images).sum().backward()  # AutoAttack needs input gradients
    assert images.grad is not None and images.grad.abs().sum() > 0


@pytest.mark.filterwarnings("ignore:.*torch.jit.*:FutureWarning")
def test_export_small_cnn_runs_at_other_sizes(tmp_path):
    torch.manual_seed(7)
    model = build_contrastive_model("small_cnn", ("normal",), "simclr", in_channels=1)
    classifier = Classifier(model, 10, "normal").eval()
    loaded = torch.jit.load(str(export_classifier(classifier, tmp_path / "smoke.pt")))
    digits = torch.rand(5, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(loaded(digits), classifier(digits), atol=1e-6)


def test_robustbench_missing_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "robustbench", None)
    monkeypatch.setitem(sys.modules, "robustbench.utils", None)
    with pytest.raises(ImportError) as error:
        load_robustbench_model("Carmon2019Unlabeled")
    assert str(error.value) == "robustbench is not installed: pip install 'acl-bench[robustbench]'"


# --------------------------------------------------------------------------- the released key sets

RELEASED_KEYS = json.loads((Path(__file__).parent / "data" / "released_keys.json").read_text())


def released_state(fmt: str, seed: int = 0) -> dict:
    """A state dict with exactly the released model's keys and shapes (tests/data/released_keys.json,
    read off the released model classes), random values: independent of our own renaming."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in RELEASED_KEYS[fmt].items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(5)
        else:
            state[key] = torch.rand(shape, generator=generator) + (0.5 if key.endswith("running_var") else 0.0)
    return state


@pytest.mark.parametrize(
    "fmt, wrap, branch_index",
    [
        ("acl", lambda s: {"epoch": 1, "state_dict": s}, 1),
        ("advcl", lambda s: {"epoch": 400, "model": {"module." + k: v for k, v in s.items()}}, 1),
        ("rocl", lambda s: {"epoch": 1, "model": {"module." + k: v for k, v in s.items()}}, None),
    ],
)
def test_released_key_sets_load_strictly_into_the_right_tensors(fmt, wrap, branch_index):
    state = released_state(fmt)
    model, _ = load_encoder(wrap(state), fmt)
    ours = model.encoder.state_dict()
    suffix = "" if branch_index is None else f"bn_list.{branch_index}."
    for name in ("layer4.1.bn2.running_mean", "bn1.weight", "layer3.0.downsample.bn.running_var"):
        released_name = name.replace("downsample.bn.", "shortcut.1.") if fmt == "rocl" else name
        stem, leaf = released_name.rsplit(".", 1)
        ours_name = name.replace("downsample.bn.", "shortcut.1.").rsplit(".", 1)[0]
        ours_name = f"{ours_name}.branches.normal.{leaf}"
        assert torch.equal(ours[ours_name], state[f"{stem}.{suffix}{leaf}"]), name
    assert torch.equal(ours["conv1.weight"], state["conv1.weight"])


@pytest.mark.parametrize("fmt", ["acl", "advcl"])
def test_a_key_missing_from_a_released_checkpoint_is_an_error(fmt):
    state = released_state(fmt)
    del state["layer2.0.conv1.weight"]
    with pytest.raises(CheckpointError, match="layer2.0.conv1"):
        load_encoder({"state_dict": state} if fmt == "acl" else {"model": state}, fmt)


# --------------------------------------------------------------------------- DeACL (padding-2 stem)


def test_deacl_released_keys_load_strictly_into_the_padding_two_stem(tmp_path):
    """backbone.* of the Lightning file -> DeACL's ResNet-18; the teacher and the probes are ignored."""
    state = released_state("deacl")
    path = tmp_path / "DEACL_WEIGHT_res18_simclr-cifar10-ep=99.ckpt"
    torch.save({"epoch": 99, "global_step": 19500, "state_dict": state}, path)
    model, info = load_encoder(path, "deacl")
    ours = model.encoder.state_dict()
    assert torch.equal(ours["conv1.weight"], state["backbone.conv1.weight"])
    assert torch.equal(
        ours["layer3.0.shortcut.1.branches.normal.running_var"], state["backbone.layer3.0.downsample.1.running_var"]
    )
    assert torch.equal(ours["layer4.1.bn2.branches.normal.weight"], state["backbone.layer4.1.bn2.weight"])
    assert torch.equal(model.normalize.mean.flatten(), state["backbone.normalize.mean"])
    assert not torch.equal(ours["conv1.weight"], state["momentum_backbone.conv1.weight"])  # not the teacher
    assert model.encoder.conv1.padding == (2, 2) and isinstance(model.projector, nn.Identity)
    assert info["arch"] == "resnet18_deacl" and info["encoder_prefix"] == "backbone." and info["epoch"] == 99
    assert {"momentum_backbone.conv1.weight", "classifier.weight", "classifier_adv.bias"} <= set(info["ignored_keys"])


@pytest.mark.e2e
def test_deacl_refuses_a_padding_one_stem_and_needs_its_normalisation():
    state = released_state("deacl")
    with pytest.raises(CheckpointError, match=r"padding-2 stem.*arch='resnet18' is invalid"):
        load_encoder({"state_dict": state}, "deacl", arch="resnet18")
    del state["backbone.normalize.std"]
    with pytest.raises(CheckpointError, match="missing") as error:
        load_encoder({"state_dict": state}, "deacl")
    assert str(error.value).splitlines()[1:] == ["  missing: backbone.normalize.std"]
    stray = released_state("deacl") | {"queue": torch.zeros(3)}
    with pytest.raises(CheckpointError, match="1 keys outside the encoder 'backbone.' are not known") as error:
        load_encoder({"state_dict": stray}, "deacl")
    assert str(error.value).splitlines()[1:] == ["  unexpected: queue"]


def test_deacl_teacher_is_solo_learns_simclr_with_deacls_normalisation():
    state = released_state("deacl-teacher")
    assert "backbone.normalize.mean" not in state and "projector.2.weight" in state
    model, info = load_encoder({"state_dict": state}, "deacl-teacher")
    assert torch.equal(
        model.encoder.state_dict()["layer2.0.shortcut.0.weight"], state["backbone.layer2.0.downsample.0.weight"]
    )
    assert model.normalize.mean.flatten().tolist() == pytest.approx([0.4914, 0.4822, 0.4465])  # resnet_add_normalize.py
    assert model.normalize.std.flatten().tolist() == pytest.approx([0.247, 0.243, 0.261])
    assert info["normalization"] == "cifar10" and model.encoder.conv1.padding == (2, 2)
    assert {"projector.0.weight", "classifier.bias"} <= set(info["ignored_keys"])
    with pytest.raises(CheckpointError, match="arch='resnet18' is invalid"):
        load_encoder({"state_dict": state}, "deacl-teacher", arch="resnet18")


def test_bench_checkpoint_records_the_stem_through_its_arch(tmp_path):
    torch.manual_seed(8)
    original = build_contrastive_model("resnet18_deacl", ("normal",), "none", normalization="cifar10")
    checkpoint = {
        "format": "acl-bench",
        "model": original.state_dict(),
        "method": "deacl",
        "arch": "resnet18_deacl",
        "bn_branches": ["normal"],
        "projector": "none",
        "normalization": "cifar10",
    }
    path = save_torch_atomic(checkpoint, tmp_path / "encoder.pt")
    model, info = load_encoder(path, "bench")
    assert model.encoder.conv1.padding == (2, 2) and info["normalization"] == "cifar10"
    image = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval().features(image), original.eval().features(image))
    with pytest.raises(CheckpointError, match="'resnet18_deacl' encoder, not arch='resnet18'"):
        load_encoder(path, "bench", arch="resnet18")
