"""Pinned downloads, verified: AdvCL's released pseudo-label files, and where a run's labels come from.

AdvCL (Fan et al., NeurIPS 2021) trains pseudo-label heads on ClusterFit labels of an
ImageNet-pretrained contrastive model's features; A-InfoNCE keeps them. Those labels are part
of the method (fidelity review D1): clustering raw pixels instead makes the cross-entropy term
close to label noise. The released files are in git, so they are fetched from one pinned
commit and checked byte for byte (size and sha256) before any use:

- CIFAR-10: yqy2001/A-InfoNCE ``Asym-AdvCL/data/imagenet_clPretrain_pseudo_labels.pkl``
  (as loaded by ``Asym-AdvCL/pretraining_advCL.py`` l.147-161);
- CIFAR-100: ``Asym-AdvCL/data/cifar100_pseudo_labels.pkl``.

``resolve_pseudo_labels`` is what the plan calls for a method whose parameters have
``pseudo_labels`` (the AdvCL family): it decides the file (or the stand-in) and the flag every
row of the run carries (``pseudo_labels:<source>``), before any work. The file is read by
``load_pseudo_label_file`` (restricted unpickler) when the method sets up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from bench.config import ConfigError, RunConfig
from bench.errors import DownloadError
from bench.store.atomic import atomic_write

AINFONCE_COMMIT = "b28763e8554a4788f3e6e4fe99d2d0f19e242dc4"
RAW_URL = "https://raw.githubusercontent.com/{repository}/{commit}/{path}"
CHUNK = 1 << 20


@dataclass(frozen=True)
class PinnedFile:
    """A released file at one commit, with the size and sha256 it must have."""

    dataset: str
    repository: str
    commit: str
    path: str
    size: int
    sha256: str

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def url(self) -> str:
        return RAW_URL.format(repository=self.repository, commit=self.commit, path=self.path)

    @property
    def source(self) -> str:
        """The flag value of rows trained on it."""
        return f"released-{self.commit[:7]}"


RELEASED_PSEUDO_LABELS: dict[str, PinnedFile] = {
    "cifar10": PinnedFile(
        "cifar10",
        "yqy2001/A-InfoNCE",
        AINFONCE_COMMIT,
        "Asym-AdvCL/data/imagenet_clPretrain_pseudo_labels.pkl",
        1_200_903,
        "3f9708d0084839b4a9cb3d2f0fbebf59edd191dbe0b15f0c19c0681af8dbff43",
    ),
    "cifar100": PinnedFile(
        "cifar100",
        "yqy2001/A-InfoNCE",
        AINFONCE_COMMIT,
        "Asym-AdvCL/data/cifar100_pseudo_labels.pkl",
        2_001_688,
        "c500f0bec3da902f857294f20060cd9a21960fa0037daaf83992b40c2cb1d6b1",
    ),
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_verified(
    pinned: PinnedFile, destination: Path, opener: Callable[[str], Any] = urllib.request.urlopen
) -> Path:
    """Download ``pinned`` to ``destination`` through a temp file beside it (``bench.store.atomic``), renamed into
    place only when its size and sha256 are the pinned ones: a mismatch or a failed download leaves nothing."""

    def write(stream: BinaryIO) -> None:
        with opener(pinned.url) as response:
            for block in iter(lambda: response.read(CHUNK), b""):
                stream.write(block)

    def verify(temp: Path) -> None:
        size, digest = temp.stat().st_size, sha256_of(temp)
        if size != pinned.size or digest != pinned.sha256:
            raise DownloadError(
                f"{pinned.url} gave {size} bytes with sha256 {digest}: expected {pinned.size} bytes "
                f"with sha256 {pinned.sha256}; the file is not kept"
            )

    try:
        return atomic_write(destination, write, verify)
    except (OSError, urllib.error.URLError) as error:
        raise DownloadError(f"cannot download {pinned.url}: {error}") from None


# --------------------------------------------------------------------------- the plan's resolution


@dataclass(frozen=True)
class PseudoLabelSource:
    """Where a run's pseudo-labels come from (shown by ``--dry-run``; ``flag`` goes on every row)."""

    source: str  # released-<commit> | file-<name>-<sha8> | encoder-<name> | pixels
    path: str = ""  # the label file the method reads ('' = computed)
    url: str = ""  # a pinned file's origin
    sha256: str = ""
    present: bool = True  # False only in a dry run whose --download has not fetched the file yet

    @property
    def flag(self) -> str:
        return f"pseudo_labels:{self.source}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def wants_pseudo_labels(params_class: type) -> bool:
    """True for a method whose parameters name a pseudo-label file (the AdvCL family)."""
    return dataclasses.is_dataclass(params_class) and "pseudo_labels" in {
        field.name for field in dataclasses.fields(params_class)
    }


def _label(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", Path(path).stem) or "file"


def _user_file(method: str, config: RunConfig, raw: str) -> PseudoLabelSource:
    """A file given with ``--param pseudo_labels=FILE``: released (recognised by its hash) or the user's own."""
    path = Path(raw).expanduser()
    if not path.is_file():
        raise ConfigError(f"pseudo_labels={raw!r} is invalid for {method}: not a file")
    digest = sha256_of(path)
    released = next((pinned for pinned in RELEASED_PSEUDO_LABELS.values() if pinned.sha256 == digest), None)
    if released is not None and released.dataset != config.data.name:
        raise ConfigError(
            f"pseudo_labels={raw!r} is invalid for {method}: it is AdvCL's released file for "
            f"{released.dataset}, and the run pretrains on {config.data.name}"
        )
    source = released.source if released is not None else f"file-{_label(raw)}-{digest[:8]}"
    return PseudoLabelSource(source, str(path.resolve()), sha256=digest)


def _released_file(method: str, config: RunConfig, fetch: bool) -> PseudoLabelSource:
    """The paper preset's labels: the released file of the dataset, already in the data directory or
    fetched with ``--download``. With ``fetch`` False (a dry run) an absent file is described, never an error,
    so ``--dry-run`` works on a fresh machine: the plan says it would download it (or that a run needs
    ``--download``)."""
    dataset, data_dir = config.data.name, Path(config.data.data_dir).expanduser()
    pinned = RELEASED_PSEUDO_LABELS.get(dataset)
    if pinned is None:
        raise ConfigError(
            f"{method} in the paper preset needs pseudo-labels and none are released for {dataset}: "
            "pass --param pseudo_labels=FILE or --param pseudo_label_encoder=CHECKPOINT"
        )
    destination = data_dir / pinned.name
    described = PseudoLabelSource(pinned.source, str(destination), pinned.url, pinned.sha256)
    if destination.is_file() and sha256_of(destination) == pinned.sha256:
        return described
    if not fetch:  # a dry run says what the run would download (or need), on a fresh machine too
        return dataclasses.replace(described, present=False)
    if not config.data.download:
        what = "is not the released file (sha256 differs)" if destination.exists() else "is missing"
        raise ConfigError(
            f"{method} in the paper preset needs AdvCL's released pseudo-labels: {destination} {what}; "
            f"pass --download to fetch {pinned.name} from {pinned.repository}@{pinned.commit[:7]}, "
            "or --param pseudo_labels=FILE"
        )
    fetch_verified(pinned, destination)
    return described


def resolve_pseudo_labels(
    method: str, params_class: type, config: RunConfig, values: Mapping[str, Any], *, fetch: bool = True
) -> tuple[dict[str, Any], PseudoLabelSource | None]:
    """The method's parameter values with ``pseudo_labels`` resolved, and where the labels come from.

    Precedence: the user's file (``pseudo_labels``), the user's encoder (``pseudo_label_encoder``:
    k-means on its features), then per preset: ``paper`` = the released file of the dataset (an
    error naming ``--download`` and ``--param pseudo_labels=FILE`` when absent), any other preset =
    k-means on raw pixels (the smoke stand-in). Methods without pseudo-labels are returned as given."""
    resolved = dict(values)
    if not wants_pseudo_labels(params_class):
        return resolved, None
    if resolved.get("pseudo_labels"):
        source = _user_file(method, config, str(resolved["pseudo_labels"]))
    elif resolved.get("pseudo_label_encoder"):
        encoder = str(resolved["pseudo_label_encoder"])
        if not Path(encoder).expanduser().is_file():
            raise ConfigError(f"pseudo_label_encoder={encoder!r} is invalid for {method}: not a file")
        return resolved, PseudoLabelSource(f"encoder-{_label(encoder)}")
    elif config.preset == "paper":
        source = _released_file(method, config, fetch)
    else:
        return resolved, PseudoLabelSource("pixels")
    resolved["pseudo_labels"] = source.path
    return resolved, source
