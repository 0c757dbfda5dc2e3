"""AdvCL's pseudo-labels: read a released label file, or cluster features into labels, with a cache.

AdvCL (Fan et al., NeurIPS 2021; LijieFan/AdvCL, and yqy2001/A-InfoNCE Asym-AdvCL/data/*.pkl)
trains one linear head per cluster count K on pseudo-labels ``pseudo_train_{K}`` that cluster the
features of an ImageNet-pretrained contrastive model (ClusterFit). The suite accepts such a file
(a pickle, read by a restricted unpickler that admits only numpy arrays and torch tensors, or an
.npz) and otherwise computes labels itself: k-means over the features of any 'bench' encoder, or,
as a smoke stand-in, over standardised raw pixels reduced by PCA. Computed labels are cached in
the run directory, so a resumed run does not cluster again.
"""

from __future__ import annotations

import importlib
import io
import pickle
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.engine import progress
from bench.engine.checkpoints import load_encoder
from bench.engine.data import to_float
from bench.engine.models import ContrastiveModel, model_mode
from bench.store.atomic import write_atomic
from bench.store.results import RunDir

PIXEL_PCA_DIMS = 50
MINIBATCH_KMEANS_ABOVE = 20_000  # images; plain k-means below, mini-batch k-means above


# --------------------------------------------------------------------------- label files


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
def model_features(
    model: ContrastiveModel, images: torch.Tensor, bn: str, batch_size: int = 256, normalize: bool = False
) -> torch.Tensor:
    """Pooled features (float32, on the CPU) of uint8 ``images`` through BN branch ``bn``, the model in
    eval mode for the pass and its mode restored: what AdvCL's computed labels and the post stage's
    K-means (``bench.evaluation.post``) both cluster. Each chunk goes to the model's device and, with
    ``normalize``, is L2-normalised there."""
    device = next(model.parameters()).device
    chunks = []
    with model_mode(model, False):
        for start in range(0, images.shape[0], batch_size):
            features = model.features(to_float(images[start : start + batch_size].to(device)), bn)
            chunks.append((F.normalize(features, dim=1) if normalize else features).float().cpu())
    return torch.cat(chunks)


def encoder_features(path: str, train_images: torch.Tensor, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """L2-normalised pooled features of a 'bench' encoder checkpoint (eval mode)."""
    model, info = load_encoder(path, format="bench", branch=None)
    # the checkpoint's finetuning branch, as the returned model routes it
    features = model_features(model.to(device), train_images, info["branch"], batch_size, normalize=True)
    return features.numpy().astype(np.float32)


def kmeans_labels(
    features: np.ndarray, clusters: int, seed: int, restarts: int = 3, minibatch: bool = False
) -> np.ndarray:
    """K-means (Euclidean, k-means++ init, ``restarts`` runs, seeded) cluster index of every row;
    ``minibatch``: scikit-learn's mini-batch K-means (batches of 4096), for large sets."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if minibatch:
        kmeans = MiniBatchKMeans(n_clusters=clusters, n_init=restarts, batch_size=4096, random_state=seed)
    else:
        kmeans = KMeans(n_clusters=clusters, n_init=restarts, random_state=seed)
    return kmeans.fit_predict(features).astype(np.int64)


def cluster_pseudo_labels(features: np.ndarray, ks: Sequence[int], seed: int) -> dict[int, np.ndarray]:
    """k-means per K (capped at the number of images), seeded; mini-batch k-means for large sets."""
    n = features.shape[0]
    return {k: kmeans_labels(features, min(k, n), seed, minibatch=n > MINIBATCH_KMEANS_ABOVE) for k in ks}


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


def pseudo_labels(
    train_images: torch.Tensor,
    ks: Sequence[int],
    *,
    file: str,
    encoder: str,
    run_dir: RunDir | None,
    seed: int,
    device: torch.device,
    label: str,
) -> dict[int, np.ndarray]:
    """Labels per K for ``train_images``: from ``file`` when given, else computed (k-means over the
    features of ``encoder``, or of raw pixels when it is ''), cached as the run directory's ``pseudo_labels`` file.
    Checked: one label per image, in [-1, K). ``label`` names the run in log lines."""
    ks = tuple(ks)
    if file:
        labels = load_pseudo_label_file(file, ks)
    else:
        labels = computed_pseudo_labels(
            train_images, ks, encoder=encoder, run_dir=run_dir, seed=seed, device=device, label=label
        )
    check_pseudo_labels(labels, train_images.shape[0], ks)
    return labels


def computed_pseudo_labels(
    train_images: torch.Tensor,
    ks: Sequence[int],
    *,
    encoder: str,
    run_dir: RunDir | None,
    seed: int,
    device: torch.device,
    label: str,
) -> dict[int, np.ndarray]:
    """k-means labels of the encoder's (or the pixels') features; reused from the run's cache when
    an earlier (interrupted) run of the same source left one."""
    source = f"encoder:{encoder}" if encoder else f"pixels:pca{PIXEL_PCA_DIMS}"
    n = train_images.shape[0]
    cache = run_dir.pseudo_labels if run_dir is not None else None
    if cache is not None and cache.exists():
        cached = read_cache(cache, source, n, ks)
        if cached is not None:
            progress.log(f"  {label}: pseudo-labels reused from {cache}")
            return cached
    if encoder:
        progress.log(f"  {label}: pseudo-labels by k-means on the features of {encoder}")
        features = encoder_features(encoder, train_images, device)
    else:
        progress.log(
            f"  {label}: pseudo-labels by k-means on raw pixels (a stand-in for AdvCL's "
            "ImageNet-feature clusters; pass pseudo_labels or pseudo_label_encoder for real runs)"
        )
        features = pixel_features(train_images, seed)
    labels = cluster_pseudo_labels(features, ks, seed)
    if cache is not None:
        write_cache(cache, labels, source)
    return labels
