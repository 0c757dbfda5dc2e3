"""Method registry: ``@register(name)``, discovery of ``methods/*`` and of plugins.

Plugins register through the entry-point group ``acl_bench.methods``: each entry point
names a module (or object) whose import runs its ``@register`` decorators. A plugin that fails to
import is named in one line on stderr and by ``broken_plugins`` (``bench list`` repeats it, an unknown
name's error adds it); the other methods, built-in or plugged in, still work. After discovery,
every registered method that has adversarial views gets its A-InfoNCE variants
(``-ip``, ``-hn``, ``-iphn``, built by ``bench.methodkit.variants``) unless it registered them itself.

``<method>++`` is no class: it spells the method with the post stage (a run option, ``bench.runs.plan``),
which ``spelling`` reads; any registered method has it. Those a method publishes (``Method.post_forms``:
``dynacl++``, and its variants' old spellings ``dynacl++-ip``...) are listed beside the methods, so
``bench list``, ``all`` and patterns see them; the others are accepted by name and never listed.
Nothing outside this module touches the name -> class map: ``register``, ``unregister``,
``is_registered``, ``available``, ``get``, ``spelling``, ``with_post`` and ``resolve`` (names, ``all`` or
shell-style wildcards such as ``advcl*``) are the whole interface. ``all`` is every method whose class says
``selected_by_all`` (the newer, costlier families opt out: select them by name or pattern).
"""

from __future__ import annotations

import fnmatch
import importlib
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

from bench.engine.progress import error_line
from bench.errors import ConfigError, did_you_mean
from bench.methodkit.method import Method
from bench.methodkit.variants import POST_SUFFIX, VARIANTS, make_variant, post_name, variant_names

ENTRY_POINT_GROUP = "acl_bench.methods"
# Members of the post stage when it was a method (a '<name>++' class): a class declaring one is refused.
REMOVED_POST_MEMBERS = ("post", "pretrains_as", "post_settings")

_REGISTRY: dict[str, type[Method]] = {}
_BROKEN: dict[str, str] = {}  # entry-point name -> why its plugin failed to import (``broken_plugins``)
_discovered = False


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make a Method available as ``name`` (unique)."""

    def decorate(cls: type[Method]) -> type[Method]:
        removed = [member for member in REMOVED_POST_MEMBERS if hasattr(cls, member)]
        if removed:  # they would now change nothing: say so instead of running without the stage
            raise ValueError(
                f"method {name!r} declares {removed}, which no longer exist: the post stage is a run option "
                f"('{name.removesuffix(POST_SUFFIX)}{POST_SUFFIX}' or --post pp, bench.runs.plan); allowed instead: "
                "Method.post_forms for a stage the method's paper publishes (methods/dynacl.py)"
            )
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method name {name!r} is already registered by {_REGISTRY[name].__module__}")
        tables = cls.published_settings
        forms = [] if cls.variant.base else [post_name(name, post) for post in cls.post_forms]
        unpublished = [form for form in forms if form not in tables.paper and form not in tables.smoke]
        if unpublished:  # its runs would take no published row at all: not even the method's own pretraining
            raise ValueError(
                f"method {name!r} lists the post form(s) {unpublished} in post_forms without their rows: allowed "
                "a form with its own rows in published_settings (paper and/or smoke, methods/dynacl.py), or no form "
                f"(then '{name}{POST_SUFFIX}' runs the method's row and the stage's defaults)"
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def unregister(name: str) -> None:
    """Remove a method (tests register throw-away methods)."""
    _REGISTRY.pop(name, None)


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
    for cls in list(_REGISTRY.values()):
        variants = cls.variant.adversarial_views and cls.variant.uses_contrastive_loss
        if variants and not cls.variant.base:
            for name, suffix in variant_names(cls).items():
                if not is_registered(name):
                    register(name)(make_variant(cls, suffix))


@dataclass(frozen=True)
class Spelling:
    """What a method name asks for. ``name``: as spelled, the run's label (its id, rows and reports);
    ``method``: the registered method that runs; ``post``: its post stage ('' none, 'pp');
    ``form``: the published post form (``Method.post_forms``) whose rows apply ('' = the generic stage);
    ``listed``: whether listings and patterns show it; ``base``: the listed name it is a variant of
    ('' = none; ``dynacl++`` for ``dynacl++-ip``); ``description``: its line in ``bench list``."""

    name: str
    method: str
    post: str = ""
    form: str = ""
    listed: bool = True
    base: str = ""
    description: str = ""


def spelling(name: str) -> Spelling:
    """``name`` read: a registered method (``acl``), a method with the post stage (``acl++``, ``acl-ip++``,
    ``dynacl++``) or a published form's A-InfoNCE variant (``dynacl++-ip``: DynACL-IP with DynACL++'s stage).
    Unknown names fail in one line with the allowed ones."""
    discover()
    if name in _REGISTRY:
        cls = _REGISTRY[name]
        return Spelling(name, name, base=cls.variant.base, description=cls.description)
    listed = _post_spellings()
    if name in listed:
        return listed[name]
    method = name.removesuffix(POST_SUFFIX)
    if method != name and method in _REGISTRY:
        cls = _REGISTRY[method]
        description = f"{cls.description}, then LP-AFT on K-means pseudo-labels (--post pp)"
        return Spelling(name, method, "pp", listed=False, description=description)
    listing = sorted(available())
    raise _unregistered(f"method {name!r} is not registered{did_you_mean(name, listing)}: allowed {listing}")


def _post_spellings() -> dict[str, Spelling]:
    """The published post forms (``<name>++``) and their variants' spellings (``<name>++-ip``...), in
    listing order: a form right after its method, a form's variants right after the method's last variant."""
    spellings: dict[str, Spelling] = {}
    for name, cls in _REGISTRY.items():
        if cls.variant.base:
            continue
        for post, form in cls.post_forms.items():
            label = post_name(name, post)
            spellings[label] = Spelling(label, name, post, label, description=form.description)
            note = f" [{cls.variant.note}]" if cls.variant.note else ""
            for variant, suffix in variant_names(cls).items():
                if _REGISTRY.get(variant) is not None and _REGISTRY[variant].variant.base == name:
                    summary = VARIANTS[suffix][2]
                    description = f"{label.upper()} + A-InfoNCE: {summary}{note}"
                    spellings[f"{label}-{suffix}"] = Spelling(
                        f"{label}-{suffix}", variant, post, label, base=label, description=description
                    )
    return spellings


def is_registered(name: str) -> bool:
    """Whether ``name`` is a registered method or one with the post stage (``spelling`` reads it), after
    discovering the built-in methods and the plugins."""
    try:
        spelling(name)
    except ConfigError:
        return False
    return True


def with_post(name: str, post: str) -> str:
    """``--post pp``: the spelling of ``name`` with the post stage ``post`` (``acl`` → ``acl++``)."""
    if spelling(name).post:
        raise ConfigError(
            f"--post {post} is invalid for {name!r}: it has its own post stage {spelling(name).post!r}; "
            "allowed methods without one"
        )
    return post_name(name, post)


def available() -> dict[str, type[Method]]:
    """Every listed name and the registered class that runs it, discovered on first use, in listing order:
    the registered methods, with the published post forms (``dynacl++`` runs DynACL) placed among them."""
    discover()
    posts = _post_spellings()
    after: dict[str, list[str]] = {}
    for label, entry in posts.items():
        anchor = entry.method if not entry.base else _last_variant(posts[entry.base].method)
        after.setdefault(anchor, []).append(label)
    listing: dict[str, type[Method]] = {}
    for name, cls in _REGISTRY.items():
        listing[name] = cls
        for label in after.get(name, []):
            listing[label] = _REGISTRY[posts[label].method]
    return listing


def _last_variant(base: str) -> str:
    return [name for name, cls in _REGISTRY.items() if name == base or cls.variant.base == base][-1]


def get(name: str) -> type[Method]:
    """The registered class that runs ``name`` (``acl`` and ``acl++`` alike: ACL)."""
    return _REGISTRY[spelling(name).method]


def resolve(names: tuple[str, ...] | list[str], *, post: str = "") -> list[str]:
    """Expand 'all' and shell-style wildcards (``advcl*``, ``*-hn``) and check every name, before any
    work starts. Methods come once each, in the order asked (a wildcard's in registration order).

    ``post`` (``--post pp``): every selected method is to get that stage, so a wildcard leaves out the listed
    post forms, which have it already (``dynacl*`` also matches ``dynacl++``: ``dynacl`` gets the stage, once);
    a post form named outright stays ``with_post``'s one-line error."""
    registered = available()
    if post:
        registered = {name: cls for name, cls in registered.items() if not spelling(name).post}
    selected: list[str] = []
    for name in names:
        if name == "all":  # the methods that declare ``selected_by_all`` (bench.methodkit.method.Method)
            chosen = [candidate for candidate, cls in registered.items() if cls.selected_by_all]
        elif any(character in name for character in "*?["):
            # the listed names (methods, published post forms), never another ``<method>++``
            chosen = [candidate for candidate in registered if fnmatch.fnmatchcase(candidate, name)]
            if not chosen:
                raise _unregistered(f"methods={name!r} matches no registered method: allowed {sorted(registered)}")
        else:
            chosen = [spelling(name).name]
        selected.extend(n for n in chosen if n not in selected)
    if not selected:
        raise ConfigError(f"methods={list(names)!r} selects nothing: allowed 'all' or {sorted(registered)}")
    return selected
