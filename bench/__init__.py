"""acl-bench: one harness to pretrain, finetune, attack and report adversarial contrastive learning.

The package is in levels, each importing only those below it (``tests/test_layers.py`` holds it):
``errors`` < ``engine`` < ``config`` < ``store`` < ``methodkit`` < methods (``methods/``, plugins)
< ``evaluation`` < ``runs`` < ``products`` < ``cli``. docs/design.md §1 says what each holds.

The modules used to sit flat in ``bench/``; their old names (``bench.method``, ``bench.results``,
…) still import, as the same module objects, with a DeprecationWarning naming the new place, so
plugins and notebooks written against the flat layout keep working.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"

_LEVELS = {
    "engine": "annealing attacks checkpoint_keys checkpoints corruption_ops corruptions data device losses models "
    "optim progress regularizers shards views",
    "store": "atomic provenance records results",
    "methodkit": "downloads method post pseudo_labels registry variants",
    "evaluation": "autoattack_watch corruption_eval evaluate finetune protocol protocols",
    "runs": "collect distributed external pipeline plan stages sweep train",
    "products": "compare export reference_style report reproduce speed speed_report stats",
}
MOVED = {old: f"bench.{package}.{old}" for package, names in _LEVELS.items() for old in names.split()}
MOVED["commands"] = "bench.cli.commands"


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``bench.<old>`` (and ``bench.report.<sub>``) as the module at its new place."""

    def find_spec(self, fullname, path=None, target=None):
        new = _new_name(fullname)
        return importlib.util.spec_from_loader(fullname, self) if new else None

    def create_module(self, spec):
        new = _new_name(spec.name)
        warnings.warn(f"{spec.name} moved to {new}: import it from there", DeprecationWarning, stacklevel=3)
        return importlib.import_module(new)

    def exec_module(self, module):
        """The module at the new place is already executed."""


def _new_name(fullname: str) -> str | None:
    parts = fullname.split(".")
    if len(parts) < 2 or parts[0] != "bench" or parts[1] not in MOVED:
        return None
    return ".".join([MOVED[parts[1]], *parts[2:]])


sys.meta_path.append(_MovedModuleFinder())
