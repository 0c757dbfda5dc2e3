"""Encoders with named BatchNorm branches, projection heads and classifiers.

Adversarial CL methods keep separate BN statistics per kind of input (ACL: clean vs
adversarial; AdvCL: clean, contrastive adversary, pseudo-label adversary). Every BN in
the encoder (and in the projector where the paper has it) is a ``MultiBatchNorm``
holding one ``BatchNorm`` per branch; ``model(x, bn="pgd")`` picks the branch for that
forward call. Inputs are images in [0, 1]; any normalisation lives inside the model so
that epsilon is measured in pixel space.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# DeACL's in-model constants (pantheon5100/DeACL solo/models/resnet_add_normalize.py), used for
# CIFAR-100 too; solo-learn's data pipeline uses std (0.2470, 0.2435, 0.2616) instead.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.247, 0.243, 0.261)
# name → (mean, std) of the Normalize layer inside the model; 'custom' is a released checkpoint's own
# statistics, placeholders here that its state dict overwrites.
NORMALIZATIONS = {
    "none": None,
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "custom": (IMAGENET_MEAN, IMAGENET_STD),
}


class MultiBatchNorm(nn.Module):
    """One BatchNorm per named branch; ``branch`` selects which one a forward uses."""

    def __init__(self, num_features: int, branches: Sequence[str], dim: int = 2):
        super().__init__()
        bn_class = nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d
        self.branches = nn.ModuleDict({name: bn_class(num_features) for name in branches})
        self.branch = branches[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branches[self.branch](x)


class BranchRouting(nn.Module):
    """Base of models whose MultiBatchNorm layers are routed to one branch per call."""

    def multi_batch_norms(self) -> list[MultiBatchNorm]:
        """The MultiBatchNorm layers below this module (cached: switching runs every forward)."""
        cached = self.__dict__.get("_multi_bn_cache")
        if cached is None:
            cached = [m for m in self.modules() if isinstance(m, MultiBatchNorm)]
            self.__dict__["_multi_bn_cache"] = cached
        return cached

    def bn_names(self) -> tuple[str, ...]:
        layers = self.multi_batch_norms()
        return tuple(layers[0].branches.keys()) if layers else ()

    @contextmanager
    def use_branch(self, bn: str) -> Iterator[None]:
        layers = self.multi_batch_norms()
        if layers and bn not in layers[0].branches:
            raise ValueError(f"bn={bn!r} is not a BatchNorm branch of this model: allowed {list(self.bn_names())}")
        previous = layers[0].branch if layers else bn
        if previous == bn:
            yield
            return
        for module in layers:
            module.branch = bn
        try:
            yield
        finally:
            for module in layers:
                module.branch = previous


class Normalize(nn.Module):
    """Per-channel (x - mean) / std as a buffer, so it travels with the checkpoint."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int, branches: Sequence[str]):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = MultiBatchNorm(planes, branches)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = MultiBatchNorm(planes, branches)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), MultiBatchNorm(planes, branches)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet-18: 3×3 stride-1 stem, no max-pool, global average pool, 512-d feature.

    ``stem_padding`` is the stem convolution's zero padding: 1 everywhere except DeACL, whose
    solo-learn backbone pads by 2 (a 32×32 input gives 34×34 maps, then 17, 9, 5). The weights
    have the same shapes either way, so the padding is an architecture of its own (``resnet18_deacl``)
    and checkpoints record it through their arch name.
    """

    feature_dim = 512

    def __init__(self, branches: Sequence[str] = ("normal",), in_channels: int = 3, stem_padding: int = 1):
        super().__init__()
        self.stem_padding = stem_padding
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, stem_padding, bias=False)
        self.bn1 = MultiBatchNorm(64, branches)
        layers, in_planes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(
                nn.Sequential(BasicBlock(in_planes, planes, stride, branches), BasicBlock(planes, planes, 1, branches))
            )
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)


class SmallCNN(nn.Module):
    """Three conv blocks for the smoke preset: trains in seconds on a laptop CPU."""

    def __init__(self, branches: Sequence[str] = ("normal",), in_channels: int = 3, width: int = 16):
        super().__init__()
        widths = (width, 2 * width, 4 * width)
        self.feature_dim = widths[-1]
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        previous = in_channels
        for channels in widths:
            self.convs.append(nn.Conv2d(previous, channels, 3, 1, 1, bias=False))
            self.bns.append(MultiBatchNorm(channels, branches))
            previous = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            x = F.relu(bn(conv(x)))
            if index < len(self.convs) - 1:
                x = F.max_pool2d(x, 2)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


class ResNet18DeACL(ResNet18):
    """DeACL's ResNet-18 (pantheon5100/DeACL solo/methods/base_for_adversarial_training.py): the
    torchvision ResNet-18 with conv1 replaced by a 3×3 stride-1 **padding-2** convolution and no
    max-pool; otherwise the same function as ``ResNet18``."""

    def __init__(self, branches: Sequence[str] = ("normal",), in_channels: int = 3):
        super().__init__(branches, in_channels, stem_padding=2)


ENCODERS = {"resnet18": ResNet18, "resnet18_deacl": ResNet18DeACL, "small_cnn": SmallCNN}


def build_encoder(arch: str, branches: Sequence[str], in_channels: int = 3) -> nn.Module:
    if arch not in ENCODERS:
        raise ValueError(f"model.arch={arch!r} is unknown: allowed {sorted(ENCODERS)}")
    return ENCODERS[arch](branches=branches, in_channels=in_channels)


# --------------------------------------------------------------------------- heads


def projector_simclr(in_dim: int, branches: Sequence[str]) -> nn.Module:
    """SimCLR-style MLP: in → in → ReLU → 128."""
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, 128))


class ACLProjector(nn.Module):
    """ACL's 3-layer projector, with BN after every layer and dual BN (Jiang et al. 2020)."""

    def __init__(self, in_dim: int, branches: Sequence[str]):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, in_dim)
        self.bn1 = MultiBatchNorm(in_dim, branches, dim=1)
        self.fc2 = nn.Linear(in_dim, in_dim, bias=False)
        self.bn2 = MultiBatchNorm(in_dim, branches, dim=1)
        self.fc3 = nn.Linear(in_dim, in_dim, bias=False)
        self.bn3 = MultiBatchNorm(in_dim, branches, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.fc1(x)))
        x = F.relu(self.bn2(self.fc2(x)))
        return self.bn3(self.fc3(x))


def projector_acl(in_dim: int, branches: Sequence[str]) -> nn.Module:
    return ACLProjector(in_dim, branches)


def projector_rocl(in_dim: int, branches: Sequence[str]) -> nn.Module:
    """RoCL: in → 4·in (2048 for ResNet-18) → ReLU → 128, no BN."""
    return nn.Sequential(nn.Linear(in_dim, 4 * in_dim), nn.ReLU(inplace=True), nn.Linear(4 * in_dim, 128))


def projector_advcl(in_dim: int, branches: Sequence[str]) -> nn.Module:
    """AdvCL: in → in → BN (shared) → ReLU → 128."""
    return nn.Sequential(
        nn.Linear(in_dim, in_dim), nn.BatchNorm1d(in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, 128)
    )


def projector_none(in_dim: int, branches: Sequence[str]) -> nn.Module:
    """No projector: the loss reads the pooled encoder feature (DeACL's projector is Identity)."""
    return nn.Identity()


PROJECTORS = {
    "none": projector_none,
    "simclr": projector_simclr,
    "acl": projector_acl,
    "rocl": projector_rocl,
    "advcl": projector_advcl,
}


class ContrastiveModel(BranchRouting):
    """Encoder + projector (+ optional extra heads), with BN branch routing per call.

    ``features(x, bn)`` gives the pooled encoder feature used by finetuning;
    ``forward(x, bn)`` gives the L2-normalised projection used by contrastive losses.
    """

    def __init__(
        self,
        encoder: nn.Module,
        projector: nn.Module,
        normalize: nn.Module | None = None,
        heads: nn.ModuleDict | None = None,
        spec: dict | None = None,
    ):
        super().__init__()
        self.normalize = normalize if normalize is not None else nn.Identity()
        self.encoder = encoder
        self.projector = projector
        self.heads = heads if heads is not None else nn.ModuleDict()
        # How to rebuild this architecture (``rebuild_contrastive_model``), so finetuned models are
        # stored as state dicts plus this description instead of pickled modules.
        self.spec = dict(spec or {})

    @property
    def feature_dim(self) -> int:
        return self.encoder.feature_dim

    def features(self, x: torch.Tensor, bn: str = "normal") -> torch.Tensor:
        with self.use_branch(bn):
            return self.encoder(self.normalize(x))

    def project(self, feature: torch.Tensor, bn: str = "normal") -> torch.Tensor:
        with self.use_branch(bn):
            return F.normalize(self.projector(feature), dim=1)

    def forward(self, x: torch.Tensor, bn: str = "normal") -> torch.Tensor:
        with self.use_branch(bn):
            return F.normalize(self.projector(self.encoder(self.normalize(x))), dim=1)


CONV_INITS = ("default", "kaiming_normal")


def build_contrastive_model(
    arch: str,
    branches: Sequence[str],
    projector: str,
    *,
    in_channels: int = 3,
    normalization: str = "none",
    conv_init: str = "default",
) -> ContrastiveModel:
    """Assemble the model a method trains. ``normalization``: a key of ``NORMALIZATIONS`` ('custom': a
    Normalize layer whose values the caller loads, e.g. a released checkpoint's own mean/std).

    ``conv_init``: 'default' (PyTorch's kaiming-uniform, as RoCL's kuangliu-style ResNet) or
    'kaiming_normal' (He-normal, fan_out, as the torchvision-style ResNets of ACL and AdvCL)."""
    if conv_init not in CONV_INITS:
        raise ValueError(f"conv_init={conv_init!r} is unknown: allowed {list(CONV_INITS)}")
    if projector not in PROJECTORS:
        raise ValueError(f"projector={projector!r} is unknown: allowed {sorted(PROJECTORS)}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization={normalization!r} is unknown: allowed {sorted(NORMALIZATIONS)}")
    encoder = build_encoder(arch, branches, in_channels)
    if conv_init == "kaiming_normal":
        for module in encoder.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    head = PROJECTORS[projector](encoder.feature_dim, branches)
    statistics = NORMALIZATIONS[normalization]
    normalize = Normalize(*statistics) if statistics is not None else None
    spec = {
        "arch": arch,
        "branches": list(branches),
        "projector": projector,
        "in_channels": in_channels,
        "normalization": normalization,
    }
    return ContrastiveModel(encoder, head, normalize, spec=spec)


def rebuild_contrastive_model(spec: dict, state: dict[str, torch.Tensor]) -> ContrastiveModel:
    """The architecture ``spec`` describes, with extra heads shaped from ``state`` (weights not loaded).

    Normalisation buffers (ImageNet or a released checkpoint's own) come with the state dict."""
    with torch.random.fork_rng(devices=[]):
        model = build_contrastive_model(
            spec["arch"],
            tuple(spec["branches"]),
            spec["projector"],
            in_channels=int(spec["in_channels"]),
            normalization=spec["normalization"],
        )
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) == 3 and parts[0] == "heads" and parts[2] == "weight" and value.dim() == 2:
            model.heads[parts[1]] = nn.Linear(value.shape[1], value.shape[0], bias=f"heads.{parts[1]}.bias" in state)
    return model


class Classifier(nn.Module):
    """Encoder (one BN branch, fixed) + linear head: maps [0, 1] images to logits.

    This is what finetuning trains and what every evaluation attack sees, so a plain
    ``classifier(x)`` call is the whole model: normalisation and branch choice included.
    """

    def __init__(self, model: ContrastiveModel, num_classes: int, bn: str):
        super().__init__()
        self.backbone = model
        self.bn = bn
        self.head = nn.Linear(model.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.features(x, bn=self.bn))


@contextmanager
def model_mode(model: nn.Module, training: bool) -> Iterator[None]:
    """Put ``model`` in train (or eval) mode for a block, then restore its mode (the attacks inside
    pretraining run the model in eval mode, as the released code does, and must leave it training)."""
    was_training = model.training
    model.train(training)
    try:
        yield
    finally:
        model.train(was_training)
