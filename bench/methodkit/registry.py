"""Method registry: ``@register(name)``, discovery of ``methods/*`` and of plugins.

Plugins register through the entry-point group ``acl_bench.methods``: each entry point
names a module (or object) whose import runs its ``@register`` decorators. A plugin that fails to
import is named in one line on stderr and by ``broken_plugins`` (``bench list`` repeats it, an unknown
name's error adds it); the other methods, built-in or plugged in, still work. After discovery,
every registered method that has adversarial views gets its A-InfoNCE variants
(``-ip``, ``-hn``, ``-iphn``, built by ``bench.methodkit.variants``) unless it registered them itself;
``<method>++`` (the method, then the post stage) is derived the first time its name is asked for.
Nothing outside this module touches the name -> class map: ``register``, ``unregister``,
``is_registered``, ``available``, ``get``, ``with_post`` and ``resolve`` (names, ``all`` or shell-style
wildcards such as ``advcl*``) are the whole interface. ``all`` is every method whose class says
``selected_by_all`` (the newer, costlier families opt out: select them by name or pattern).
"""

from __future__ import annotations

import fnmatch
import importlib
import pkgutil
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from bench.engine.progress import error_line
from bench.errors import ConfigError, did_you_mean
from bench.methodkit.method import Method
from bench.methodkit.variants import POST_SUFFIX, make_post_method, make_variant, post_name, variant_names

ENTRY_POINT_GROUP = "acl_bench.methods"

_REGISTRY: dict[str, type[Method]] = {}
_ON_DEMAND: set[str] = set()  # ``++`` forms registered because their name was asked for (``derive_post``)
_BROKEN: dict[str, str] = {}  # entry-point name -> why its plugin failed to import (``broken_plugins``)
_discovered = False


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make a Method available as ``name`` (unique)."""

    def decorate(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method name {name!r} is already registered by {_REGISTRY[name].__module__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def unregister(name: str) -> None:
    """Remove a method (tests register throw-away methods)."""
    _REGISTRY.pop(name, None)
    _ON_DEMAND.discard(name)


def discover() -> None:
    """Import the built-in methods and the plugins, then derive the A-InfoNCE variants."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    # The built-in methods are found as plugins are, by name: they sit a level above this kit.
    methods = importlib.import_module("methods")
    builtin = [f"methods.{module.name}" for module in pkgutil.iter_modules(methods.__path__)]
    for module in builtin:
        importlib.import_module(module)
    _BROKEN.clear()
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as error:  # a third party's bug: name it, and let the other methods work
            _BROKEN[entry.name] = error_line(error)
            print(f"bench: error: {broken_plugins()[-1]}", file=sys.stderr)
    derive_variants()
    _order_builtin_first(builtin)


def broken_plugins() -> list[str]:
    """One line per plugin whose import failed at discovery (its methods are not registered; every
    other method works): ``plugin 'X' (entry point acl_bench.methods) failed to import: <reason>``."""
    return [
        f"plugin {name!r} (entry point {ENTRY_POINT_GROUP}) failed to import: {reason}"
        for name, reason in _BROKEN.items()
    ]


def _unregistered(message: str) -> ConfigError:
    """A name-not-found error, naming the broken plugins that may have meant to register it."""
    return ConfigError("; ".join([message, *broken_plugins()]))


def _order_builtin_first(builtin: list[str]) -> None:
    """Registration order is import order, which a test or a plugin importing ``methods.advcl`` early
    would change: put built-in methods in module order, then everything else as registered (stable)."""
    rank = {module: index for index, module in enumerate(builtin)}
    ordered = sorted(_REGISTRY.items(), key=lambda item: rank.get(item[1].__module__, len(rank)))
    _REGISTRY.clear()
    _REGISTRY.update(ordered)


def derive_variants() -> None:
    """Register ``<base>-ip``, ``-hn`` and ``-iphn`` for every base method with adversarial views whose
    loss goes through ``contrastive_loss`` (``VariantSpec.uses_contrastive_loss``), unless a name is already
    registered (a method may register its own variant)."""
    for base, cls in list(_REGISTRY.items()):
        variants = cls.variant.adversarial_views and cls.variant.uses_contrastive_loss
        if variants and not cls.variant.base and base not in _ON_DEMAND:  # acl-ip++, not acl++-ip
            for name, suffix in variant_names(cls).items():
                if not is_registered(name):
                    register(name)(make_variant(cls, suffix))


def is_registered(name: str) -> bool:
    """Whether ``name`` is registered, after discovering the built-in methods and the plugins (a
    ``<method>++`` name is derived and registered here when asked for: ``derive_post``)."""
    discover()
    derive_post(name)
    return name in _REGISTRY


def derive_post(name: str) -> None:
    """Register ``<method>++`` (``bench.methodkit.variants.make_post_method``) the first time the name is asked for,
    when ``<method>`` is registered without a post stage of its own. Derived on demand, not at discovery:
    ``bench list`` and wildcards keep to the methods as written, and every method has one."""
    base = name.removesuffix(POST_SUFFIX)
    if name in _REGISTRY or base == name or base not in _REGISTRY or _REGISTRY[base].post:
        return
    register(name)(make_post_method(_REGISTRY[base], rebuild_post_params))
    _ON_DEMAND.add(name)


def rebuild_post_params(name: str, values: dict[str, Any]) -> Any:
    """Unpickle the parameters of ``<name>++`` (spawned GPU workers receive their run by pickle):
    the derived class has no importable name, so it is found again through the registry."""
    return get(post_name(name)).Params(**values)


def with_post(name: str, post: str) -> str:
    """``--post pp``: the registered name of ``name`` followed by the post stage (derived when needed)."""
    cls = get(name)
    if cls.post:
        raise ConfigError(
            f"--post {post} is invalid for {name!r}: it has its own post stage {cls.post!r}; "
            "allowed methods without one"
        )
    derived = post_name(name, post)
    derive_post(derived)
    return derived


def available() -> dict[str, type[Method]]:
    """All registered methods, discovered on first use, in registration order."""
    discover()
    return dict(_REGISTRY)


def get(name: str) -> type[Method]:
    discover()
    derive_post(name)
    methods_by_name = available()
    if name not in methods_by_name:
        listed = sorted(_listed(methods_by_name))
        raise _unregistered(f"method {name!r} is not registered{did_you_mean(name, listed)}: allowed {listed}")
    return methods_by_name[name]


def _listed(names) -> list[str]:
    """The names a listing, a pattern or an error message offers: all but the ``++`` forms derived on demand
    (every method has one; ``<method>++`` is always allowed)."""
    return [name for name in names if name not in _ON_DEMAND]


def resolve(names: tuple[str, ...] | list[str]) -> list[str]:
    """Expand 'all' and shell-style wildcards (``advcl*``, ``*-hn``) and check every name, before any
    work starts. Methods come once each, in the order asked (a wildcard's in registration order)."""
    registered = available()
    selected: list[str] = []
    for name in names:
        if name == "all":  # the methods that declare ``selected_by_all`` (bench.methodkit.method.Method)
            chosen = [candidate for candidate, cls in registered.items() if cls.selected_by_all]
        elif any(character in name for character in "*?["):
            # never the ++ forms asked for earlier in this process: a pattern means the same each time
            chosen = [candidate for candidate in _listed(registered) if fnmatch.fnmatchcase(candidate, name)]
            if not chosen:
                raise _unregistered(
                    f"methods={name!r} matches no registered method: allowed {sorted(_listed(registered))}"
                )
        else:
            chosen = [get(name).name]
        selected.extend(n for n in chosen if n not in selected)
    if not selected:
        raise ConfigError(f"methods={list(names)!r} selects nothing: allowed 'all' or {sorted(_listed(registered))}")
    return selected
