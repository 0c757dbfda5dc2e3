"""AdvCL (Fan et al., NeurIPS 2021) and its A-InfoNCE variants (Yu et al., ECCV 2022).

One step, as in the released ``pretraining_advCL.py`` (A-InfoNCE ``Asym-AdvCL``, parent
LijieFan/AdvCL):
1. views: x1, x2 strong augmentations (crop scale (0.2, 1)); ``images_org`` = random crop
   (padding size/8) + flip; HFC = high-frequency component of ``images_org`` (FFT, radius 8
   at 32 px, scaled with the image size; real part, unclamped);
2. x_adv = PGD on ``images_org`` (random start) maximising the contrastive loss of
   [x_adv, x1, x2, HFC] through BN 'pgd', model in TRAIN mode (as released: BN running
   statistics follow the PGD iterates); the attack maximises the plain (non-HN, no
   stop-gradient) loss in every variant (released ``--attack_ori``);
3. x_ce = PGD on ``images_org`` maximising the pseudo-label cross-entropy averaged over the
   five heads (K = 2, 10, 50, 100, 500), BN 'pgd_ce', train mode;
4. loss = contrastive loss ×(T/0.07) over [x_adv, x1, x2, HFC] + 0.2·mean_K CE(head_K(x_ce));
   the variants change only the contrastive term (``contrastive_loss``), and -ip variants
   adapt α per step from the clean/adversarial feature distance (``update_alpha``).

Deviations from the released code (none changes a gradient or an adversarial example):
- the 'normal'-branch embeddings of x1, x2 and HFC are computed once per step and reused,
  detached, by every PGD iteration and (with their graph) by the loss; the released code
  recomputes them at each PGD iteration, which only moves the running statistics of the
  'normal' BN branch (never used by finetuning, which loads 'pgd') and of the projector BN;
- x_ce goes through the encoder and the heads only (released: also through the projector,
  whose output is unused; again only projector BN running statistics differ);
- the random start is clamped to [0, 1] (``bench.attacks``), the released one is not
  clamped before the first step;
- BatchNorm statistics: the released run used DataParallel on 2 GPUs with apex's SyncBN
  conversion, which is inactive without torch.distributed, i.e. per-GPU BN over 256
  (ainfonce-notes §6 item 11) while the attack and the loss see the whole batch; the paper preset
  reproduces it with ``pretrain.shards = 2`` (``bench.shards``), ``shards = 1`` is BN over 512;
- pseudo-labels: the released files cluster features of an ImageNet-pretrained contrastive
  model (ClusterFit); pass such a file as ``pseudo_labels``, or let ``setup`` cluster the
  features of any encoder (``pseudo_label_encoder``) or, as a stand-in, raw pixels.
"""
from __future__ import annotations

import importlib
import io
import pickle
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench import progress
from bench.attacks import pgd, project
from bench.config import ConfigError
from bench.data import to_float
from bench.losses import a_infonce
from bench.method import Method, MethodParams, StepContext
from bench.models import ContrastiveModel
from bench.registry import register
from bench.shards import Shards, of as shards_of
from bench.atomic import write_atomic
from bench.views import StrongAugment, WeakAugment, high_frequency_component

# Views of the contrastive matrix, in order: x_adv, x1, x2, HFC.
ADVERSARIAL = (True, False, False, False)
BASE_TEMPERATURE = 0.07  # SupCon scaling: the loss is multiplied by T / 0.07
PSEUDO_LABEL_KS = (2, 10, 50, 100, 500)
PIXEL_PCA_DIMS = 50
MINIBATCH_KMEANS_ABOVE = 20_000  # images; plain k-means below, mini-batch k-means above


@dataclass
class AdvCLParams(MethodParams):
    """AdvCL's own hyperparameters on top of the A-InfoNCE knobs.

    ce_weight: weight of the pseudo-label cross-entropy on x_ce (released 0.2).
    hfc_radius: radius of the zeroed low frequencies at 32 px (scaled to the image size).
    pseudo_labels: a file of labels ``pseudo_train_{K}`` (AdvCL's .pkl, or .npz); '' = compute.
    pseudo_label_encoder: a 'bench' encoder checkpoint whose features are clustered when no
        file is given; '' = cluster raw pixels (standardised, PCA to 50 dims): a smoke stand-in.
    pseudo_label_ks: the cluster counts, one linear head each.
    """

    ce_weight: float = 0.2
    hfc_radius: int = 8
    pseudo_labels: str = ""
    pseudo_label_encoder: str = ""
    pseudo_label_ks: tuple[int, ...] = PSEUDO_LABEL_KS


def head_name(k: int) -> str:
    return f"pseudo_{k}"


@contextmanager
def model_mode(model: nn.Module, training: bool) -> Iterator[None]:
    """Put ``model`` in train (or eval) mode for a block, then restore its mode."""
    was_training = model.training
    model.train(training)
    try:
        yield
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- pseudo-label files


def _safe_load_from_bytes(data: bytes) -> Any:
    """A pickled torch storage: ``torch.load`` it with the weights-only unpickler."""
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def _safe_codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    """Pickle protocol 2 stores bytes as ``_codecs.encode(str, 'latin1')``; nothing else is allowed."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("_codecs.encode is only allowed for latin1 byte strings in a pseudo-label pickle")
    return text.encode("latin1")


def _numpy_module(*names: str):
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError(f"none of {names} can be imported")


def _allowed_globals() -> dict[tuple[str, str], Callable]:
    """The whitelist: numpy array/scalar reconstruction and torch tensor rebuilding, nothing else."""
    multiarray = _numpy_module("numpy._core.multiarray", "numpy.core.multiarray")
    numeric = _numpy_module("numpy._core.numeric", "numpy.core.numeric")
    allowed: dict[tuple[str, str], Callable] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch.storage", "_load_from_bytes"): _safe_load_from_bytes,
        ("_codecs", "encode"): _safe_codecs_encode,
    }
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{module}.multiarray", "scalar")] = multiarray.scalar
        if hasattr(numeric, "_frombuffer"):
            allowed[(f"{module}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class PseudoLabelUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and torch tensors only (AdvCL's released label files).

    The CIFAR-10 file pickles numpy int32 arrays, the CIFAR-100 one torch int64 tensors
    (their storages are nested ``torch.save`` archives, read with ``weights_only=True``).
    Any other global (a function, a class) raises ``pickle.UnpicklingError``.
    """

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_globals()
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(
                f"{module}.{name} is not allowed in a pseudo-label pickle: only numpy arrays and torch tensors are"
            )
        return allowed[(module, name)]


def _label_array(value: Any, key: str, source: Path) -> np.ndarray:
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{source}: {key} must be a 1-d integer array, got shape {array.shape} dtype {array.dtype}")
    return array.astype(np.int64)


def load_pseudo_label_file(path: str | Path, ks: Sequence[int]) -> dict[int, np.ndarray]:
    """Read arrays ``pseudo_train_{K}`` from a pickle (restricted unpickler) or an .npz."""
    source = Path(path).expanduser()
    if not source.is_file():
        raise FileNotFoundError(f"pseudo_labels={str(path)!r} is not a file")
    if source.suffix == ".npz":
        with np.load(source, allow_pickle=False) as archive:
            table = {name: archive[name] for name in archive.files}
    else:
        with open(source, "rb") as stream:
            table = PseudoLabelUnpickler(stream).load()
    if not isinstance(table, dict):
        raise ValueError(f"{source}: expected a dict of arrays named pseudo_train_{{K}}, got {type(table).__name__}")
    labels = {}
    for k in ks:
        key = f"pseudo_train_{k}"
        if key not in table:
            raise KeyError(f"{source} has no {key!r}: it holds {sorted(map(str, table))}")
        labels[k] = _label_array(table[key], key, source)
    return labels


def check_pseudo_labels(labels: dict[int, np.ndarray], n: int, ks: Sequence[int]) -> None:
    """One label per training image, in [-1, K) (-1 = ignored, as released)."""
    for k in ks:
        array = labels[k]
        if array.shape != (n,):
            raise ValueError(f"pseudo-labels for K={k} have {array.shape[0]} entries but the train set has {n} images")
        if array.size and (array.min() < -1 or array.max() >= k):
            raise ValueError(f"pseudo-labels for K={k} must lie in [-1, {k}): found [{array.min()}, {array.max()}]")


# --------------------------------------------------------------------------- computed pseudo-labels


def pixel_features(train_images: torch.Tensor, seed: int, dims: int = PIXEL_PCA_DIMS) -> np.ndarray:
    """Raw pixels, standardised per dimension and reduced by PCA to ≤ ``dims`` (k-means speed)."""
    from sklearn.decomposition import PCA

    pixels = to_float(train_images.detach().cpu()).reshape(train_images.shape[0], -1).numpy()
    pixels = (pixels - pixels.mean(0)) / (pixels.std(0) + 1e-6)
    components = min(dims, *pixels.shape)
    return PCA(n_components=components, random_state=seed).fit_transform(pixels).astype(np.float32)


@torch.no_grad()
def encoder_features(path: str, train_images: torch.Tensor, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """L2-normalised pooled features of a 'bench' encoder checkpoint (eval mode)."""
    try:
        from bench.checkpoints import load_encoder
    except ImportError as error:
        raise RuntimeError(f"pseudo_label_encoder={path!r} needs bench.checkpoints.load_encoder: {error}") from error
    loaded = load_encoder(path, format="bench", branch=None)
    model, info = loaded if isinstance(loaded, tuple) else (loaded, {})
    names = model.bn_names()
    branch = info.get("branch") if isinstance(info, dict) and info.get("branch") else (names[0] if names else "normal")
    model.to(device).eval()
    chunks = [
        F.normalize(model.features(to_float(train_images[start : start + batch_size].to(device)), branch), dim=1).cpu()
        for start in range(0, train_images.shape[0], batch_size)
    ]
    return torch.cat(chunks).numpy().astype(np.float32)


def cluster_pseudo_labels(features: np.ndarray, ks: Sequence[int], seed: int) -> dict[int, np.ndarray]:
    """k-means per K (capped at the number of images), seeded; mini-batch k-means for large sets."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    n = features.shape[0]
    labels = {}
    for k in ks:
        clusters = min(k, n)
        if n > MINIBATCH_KMEANS_ABOVE:
            kmeans = MiniBatchKMeans(n_clusters=clusters, n_init=3, batch_size=4096, random_state=seed)
        else:
            kmeans = KMeans(n_clusters=clusters, n_init=3, random_state=seed)
        labels[k] = kmeans.fit_predict(features).astype(np.int64)
    return labels


def read_cache(path: Path, source: str, n: int, ks: Sequence[int]) -> dict[int, np.ndarray] | None:
    """Labels cached by an earlier (interrupted) run with the same source, or None."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if str(archive["source"]) != source:
                return None
            labels = {k: archive[f"pseudo_train_{k}"].astype(np.int64) for k in ks}
    except (OSError, KeyError, ValueError):
        return None
    return labels if all(array.shape == (n,) for array in labels.values()) else None


def write_cache(path: Path, labels: dict[int, np.ndarray], source: str) -> None:
    """Write the labels atomically (temp file + rename), so a kill never leaves half a cache."""
    buffer = io.BytesIO()
    np.savez(buffer, source=np.array(source), **{f"pseudo_train_{k}": array for k, array in labels.items()})
    write_atomic(path, buffer.getvalue())


# --------------------------------------------------------------------------- the method


@register("advcl")
class AdvCL(Method):
    description = "AdvCL (Fan et al. 2021): [x_adv, x1, x2, HFC] contrast + pseudo-label CE adversary, 3 BN branches"
    bn_branches = ("normal", "pgd", "pgd_ce")
    projector = "advcl"
    conv_init = "kaiming_normal"  # torchvision-style ResNet of the released code
    finetune_bn = "pgd"
    has_adversarial_views = True
    Params = AdvCLParams
    augment = StrongAugment(crop_scale=(0.2, 1.0))
    weak_augment = WeakAugment()

    def __init__(self, params: MethodParams | None = None):
        super().__init__(params)
        self.pseudo_labels: dict[int, torch.Tensor] | None = None

    # ------------------------------------------------------------------ configuration
    @classmethod
    def preset_params(cls, preset: str, dataset: str) -> dict[str, Any]:
        """Released shell settings (notes §3.1; CIFAR-100 row for 'cifar100', else CIFAR-10)."""
        ip, hn, cifar100 = cls.inferior_positives, cls.hard_negatives, dataset == "cifar100"
        values: dict[str, Any] = {}
        if preset != "paper":  # smoke: adaptive α on, so the schedule is exercised in 2 epochs
            if ip:
                values.update(alpha=0.2, adv_weight=1.0, adaptive_epochs=2, d_min=0.4)
            if hn:
                values.update(beta=1.0, tau_plus=0.1)
            return values
        values.update(ce_weight=0.2, hfc_radius=8)
        if ip:
            values.update(alpha=0.3 if cifar100 else 0.2, adaptive_epochs=20 if cifar100 else 30,
                          d_min=0.5 if cifar100 else 0.4, adv_weight=1.5 if cifar100 else (0.7 if hn else 1.2))
        if hn:
            values.update(beta=1.0, tau_plus=0.01 if cifar100 else (0.1 if ip else 0.12))
        return values

    @classmethod
    def preset_pretrain(cls, preset: str, dataset: str) -> dict[str, Any]:
        """SGD (momentum 0.9, wd 1e-4), batch 512 (2 shards), 400 epochs, 10-epoch warm-up from 0.01, cosine to lr/1000.

        lr per script (CIFAR-10 / CIFAR-100): AdvCL 0.5/0.5, -IP 1.0/2.0, -HN 1.2/2.0, -IPHN 2.0/2.0.
        Released details kept approximately: the warm-up ends at the cosine's value at epoch
        10 (0.998·lr) and the loop runs 402 epochs (``epoch_400`` is saved after 401).
        """
        if preset != "paper":
            return {}
        cifar100 = dataset == "cifar100"
        lr = {(False, False): (0.5, 0.5), (True, False): (1.0, 2.0), (False, True): (1.2, 2.0),
              (True, True): (2.0, 2.0)}[(cls.inferior_positives, cls.hard_negatives)][int(cifar100)]
        # shards 2: DataParallel over every visible GPU (a single one is refused) and the A-InfoNCE
        # README's "All experiments were conducted on 2 Tesla V100 GPUs": per-GPU BN over 256.
        return {"optimizer": "sgd", "lr": lr, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 512,
                "warmup_epochs": 10, "warmup_start_lr": 0.01 / lr, "min_lr_fraction": 1e-3, "epochs": 400,
                "shards": 2}

    @classmethod
    def make_params(cls, overrides: dict[str, Any]) -> MethodParams:
        params = super().make_params(overrides)
        ks = params.pseudo_label_ks
        if isinstance(ks, str):
            ks = tuple(int(item) for item in ks.split(",") if item)
        ks = tuple(int(k) for k in ks)
        if not ks or min(ks) < 1 or len(set(ks)) != len(ks):
            raise ConfigError(f"pseudo_label_ks={params.pseudo_label_ks!r} is invalid: allowed distinct integers >= 1")
        params.pseudo_label_ks = ks
        if params.ce_weight < 0:
            raise ConfigError(f"ce_weight={params.ce_weight!r} is invalid: allowed numbers >= 0")
        if params.hfc_radius < 0:
            raise ConfigError(f"hfc_radius={params.hfc_radius!r} is invalid: allowed integers >= 0")
        return params

    def build_model(self, arch: str, in_channels: int = 3) -> ContrastiveModel:
        """The contrastive model plus one linear pseudo-label head per K on the pooled feature.

        Heads are built here (before the optimiser) with K outputs each; when fewer than K
        clusters exist (k-means on fewer than K images) the extra outputs are never targets.
        """
        model = super().build_model(arch, in_channels)
        for k in self.params.pseudo_label_ks:
            model.heads[head_name(k)] = nn.Linear(model.feature_dim, k)
        return model

    # ------------------------------------------------------------------ pseudo-labels
    def setup(self, model: ContrastiveModel, train_images: torch.Tensor, ctx: StepContext) -> None:
        """Load the pseudo-label file, or compute labels by k-means (cached in the run dir)."""
        ks = tuple(self.params.pseudo_label_ks)
        if self.params.pseudo_labels:
            labels = load_pseudo_label_file(self.params.pseudo_labels, ks)
        else:
            labels = self.computed_pseudo_labels(train_images, ctx)
        check_pseudo_labels(labels, train_images.shape[0], ks)
        self.pseudo_labels = {k: torch.as_tensor(labels[k], dtype=torch.long, device=ctx.device) for k in ks}

    def computed_pseudo_labels(self, train_images: torch.Tensor, ctx: StepContext) -> dict[int, np.ndarray]:
        encoder = self.params.pseudo_label_encoder
        source = f"encoder:{encoder}" if encoder else f"pixels:pca{PIXEL_PCA_DIMS}"
        ks, n = tuple(self.params.pseudo_label_ks), train_images.shape[0]
        cache = ctx.run_dir.pseudo_labels if ctx.run_dir is not None else None
        if cache is not None and cache.exists():
            cached = read_cache(cache, source, n, ks)
            if cached is not None:
                progress.log(f"  {self.name}: pseudo-labels reused from {cache}")
                return cached
        seed = int(ctx.generator.initial_seed()) % (2**31)
        if encoder:
            progress.log(f"  {self.name}: pseudo-labels by k-means on the features of {encoder}")
            features = encoder_features(encoder, train_images, ctx.device)
        else:
            progress.log(f"  {self.name}: pseudo-labels by k-means on raw pixels (a stand-in for AdvCL's "
                         "ImageNet-feature clusters; pass pseudo_labels or pseudo_label_encoder for real runs)")
            features = pixel_features(train_images, seed)
        labels = cluster_pseudo_labels(features, ks, seed)
        if cache is not None:
            write_cache(cache, labels, source)
        return labels

    def pseudo_label_loss(self, model: ContrastiveModel, x: torch.Tensor, indices: torch.Tensor,
                          shards: Shards | None = None) -> torch.Tensor:
        """Mean over the K heads of the cross-entropy on the 'pgd_ce' feature (labels -1 ignored),
        over every shard of the batch (the released DataParallel gathers the logits)."""
        return self.pseudo_label_loss_of_feature(model, model.features(x, "pgd_ce"), indices, shards)

    def pseudo_label_loss_of_feature(self, model: ContrastiveModel, feature: torch.Tensor, indices: torch.Tensor,
                                     shards: Shards | None = None) -> torch.Tensor:
        losses = []
        for k in self.params.pseudo_label_ks:
            logits, target = model.heads[head_name(k)](feature), self.pseudo_labels[k][indices]
            if shards is not None:
                logits, target = shards.gather(logits), shards.gather(target)
            summed = F.cross_entropy(logits, target, ignore_index=-1, reduction="sum")
            losses.append(summed / (target >= 0).sum().clamp(min=1))
        return torch.stack(losses).mean()

    # ------------------------------------------------------------------ step
    def attack_objective(self, features: torch.Tensor) -> torch.Tensor:
        """The loss x_adv maximises: plain InfoNCE (no HN, no stop-gradient), as ``--attack_ori``.

        With quirks='official' the released ``ori_SupConLoss`` is reproduced, including the
        w² weight of the clean-anchor block when w ≠ 1 (IP/IPHN scripts).
        """
        return a_infonce(
            features,
            ADVERSARIAL,
            temperature=self.temperature,
            alpha=None,
            adv_weight=self.params.adv_weight if self.inferior_positives else 1.0,
            hard_negatives=None,
            scale=self.temperature / BASE_TEMPERATURE,
            quirks=self.params.quirks,
        )

    def adversaries(
        self, model: ContrastiveModel, images_org: torch.Tensor, clean: Sequence[torch.Tensor], indices: torch.Tensor,
        ctx: StepContext,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x_adv (contrastive, BN 'pgd') and x_ce (pseudo-label CE, BN 'pgd_ce'), model in train mode.

        The released code updates both with the sign of their own gradient of one summed
        loss; each view is its own forward with its own BN, so two separate PGD runs are the same.
        ``clean`` are the detached 'normal' embeddings of x1, x2, HFC (fixed during PGD). Each
        shard's random starts come from its generator; the objectives see every shard.
        """
        shards = shards_of(ctx)
        epsilon = ctx.attack.epsilon
        settings = dict(epsilon=epsilon, step_size=ctx.attack.step_size, steps=ctx.attack.steps)
        clean = [shards.gather(z) for z in clean]
        with model_mode(model, True):
            x_adv = pgd(
                lambda inputs: self.attack_objective(torch.stack([shards.gather(model(inputs, "pgd")), *clean], dim=1)),
                images_org, start=shards.random_start(images_org, epsilon), **settings,
            )
            x_ce = pgd(lambda inputs: self.pseudo_label_loss(model, inputs, indices, shards), images_org,
                       start=shards.random_start(images_org, epsilon), **settings)
        return x_adv, x_ce

    def released_adversaries(
        self, model: ContrastiveModel, images_org: torch.Tensor, views: Sequence[torch.Tensor], indices: torch.Tensor,
        ctx: StepContext,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``adversaries`` computed as the released ``AttackPGD.forward`` does (``bench speed``'s
        reference-style path): one loop over both iterates, every step forwarding x_cl, x_ce (through
        the projector too, unused) and again the clean views x1, x2, HFC, one summed loss. Same
        adversaries (sign steps of each iterate's own gradient), the released cost."""
        shards = shards_of(ctx)
        epsilon, step_size = ctx.attack.epsilon, ctx.attack.step_size
        starts = [shards.random_start(images_org, epsilon) for _ in range(2)]
        x_cl, x_ce = [images_org.clone() if start is None else project(start, images_org, epsilon) for start in starts]
        with model_mode(model, True):
            for _ in range(ctx.attack.steps):
                x_cl, x_ce = x_cl.requires_grad_(True), x_ce.requires_grad_(True)
                feature_ce = model.features(x_ce, "pgd_ce")
                model.project(feature_ce, "pgd_ce")  # released: contrast=True on x_ce, output unused
                features = [model(x_cl, "pgd")] + [model(view, "normal") for view in views]
                loss = self.attack_objective(torch.stack([shards.gather(z) for z in features], dim=1))
                pseudo = self.pseudo_label_loss_of_feature(model, feature_ce, indices, shards)
                loss = loss + self.params.ce_weight * pseudo
                grad_cl, grad_ce = torch.autograd.grad(loss, [x_cl, x_ce])
                x_cl = project(x_cl.detach() + step_size * grad_cl.sign(), images_org, epsilon)
                x_ce = project(x_ce.detach() + step_size * grad_ce.sign(), images_org, epsilon)
        return x_cl.detach(), x_ce.detach()

    def hfc_radius(self, images: torch.Tensor) -> int:
        """The released radius 8 is for 32 px images: scale it to this size, at least 1."""
        return max(1, round(self.params.hfc_radius * images.shape[-1] / 32))

    def training_step(self, model: ContrastiveModel, images: torch.Tensor, ctx: StepContext):
        if self.pseudo_labels is None:
            raise RuntimeError(f"{self.name}: setup() must run before training_step (it builds the pseudo-labels)")
        if ctx.indices is None:
            raise ValueError(f"{self.name}: ctx.indices (dataset indices of the batch) is needed for the pseudo-labels")
        indices = ctx.indices.to(self.pseudo_labels[self.params.pseudo_label_ks[0]].device)
        shards = shards_of(ctx)
        x1, x2 = shards.map(self.augment, images), shards.map(self.augment, images)
        images_org = shards.map(self.weak_augment, images)
        hfc = high_frequency_component(images_org, radius=self.hfc_radius(images))
        # One forward per clean view (its own BN batch, as released); reused by the attack and the loss.
        clean = [model(view, "normal") for view in (x1, x2, hfc)]
        if ctx.reference_style:
            x_adv, x_ce = self.released_adversaries(model, images_org, (x1, x2, hfc), indices, ctx)
        else:
            x_adv, x_ce = self.adversaries(model, images_org, [z.detach() for z in clean], indices, ctx)
        alpha = self.update_alpha(model, images_org, x_adv, ctx)
        views = [model(x_adv, "pgd"), *clean]
        features = torch.stack([shards.gather(z) for z in views], dim=1)  # [B, 4, D]: x_adv, x1, x2, HFC
        loss_contrast = self.contrastive_loss(features, ADVERSARIAL, scale=self.temperature / BASE_TEMPERATURE)
        if ctx.reference_style:  # released: x_ce through the projector too (output unused)
            feature_ce = model.features(x_ce, "pgd_ce")
            model.project(feature_ce, "pgd_ce")
            loss_ce = self.pseudo_label_loss_of_feature(model, feature_ce, indices, shards)
        else:
            loss_ce = self.pseudo_label_loss(model, x_ce, indices, shards)
        logs = {"loss_contrast": loss_contrast.detach(), "loss_ce": loss_ce.detach()}
        if self.inferior_positives:
            logs["alpha"] = alpha
        return loss_contrast + self.params.ce_weight * loss_ce, logs
