"""What a run gets from a finetuning protocol: the settings of one (protocol, method, dataset, image
size, scheme), the method parameters a protocol fixes, and the overrides it forbids. The protocols
themselves are data in ``bench.evaluation.protocols``; ``resolve`` applies a table's base, then its
matching rules in table order.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from bench.config import PROTOCOLS, SCHEMES
from bench.errors import ConfigError, did_you_mean
from bench.evaluation.protocols import PROTOCOL_CONFIG_FIELDS, PROTOCOL_FIELDS, PROTOCOL_TABLE, Protocol, Rule


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOL_TABLE:
        raise ConfigError(f"protocol={name!r} is invalid{did_you_mean(name, PROTOCOLS)}: allowed {list(PROTOCOLS)}")
    return PROTOCOL_TABLE[name]


def family_of(protocol: Protocol, method: str) -> str:
    """The family of ``protocol`` that covers ``method`` (first match); one line naming the covered ones if none."""
    for family, patterns in protocol.families.items():
        if any(fnmatch.fnmatchcase(method, pattern) for pattern in patterns):
            return family
    covered = [pattern for patterns in protocol.families.values() for pattern in patterns]
    raise ConfigError(
        f"method={method!r} is invalid for protocol {protocol.name!r} (its source has no settings "
        f"for it): allowed {covered}, or --protocol unified"
    )


@dataclass(frozen=True)
class Resolved:
    """A protocol's values for one (method, dataset, scheme), with the family and every source used."""

    protocol: str
    family: str
    values: dict[str, Any]
    sources: tuple[str, ...]


def _applies(rule: Rule, family: str, dataset: str, image_size: int | None, scheme: str) -> bool:
    return (
        rule.family in ("*", family)
        and scheme in rule.schemes
        and rule.dataset in ("*", dataset)
        and (rule.image_size is None or rule.image_size == image_size)
    )


def resolve(name: str, method: str, dataset: str, image_size: int | None, scheme: str) -> Resolved:
    """The settings of protocol ``name`` (not 'unified') for ``method`` finetuned on ``dataset`` with ``scheme``."""
    protocol = get_protocol(name)
    if scheme not in SCHEMES:
        raise ConfigError(f"scheme={scheme!r} is invalid{did_you_mean(scheme, SCHEMES)}: allowed {list(SCHEMES)}")
    family = family_of(protocol, method)
    values, sources = dict(protocol.base), [protocol.base_source]
    for rule in protocol.rules:
        if _applies(rule, family, dataset, image_size, scheme):
            values.update(rule.values)
            sources.append(rule.source)
    missing = [name for name in PROTOCOL_FIELDS if name not in values]
    if missing:  # a gap in the table is a bug of this module, never a silent default
        raise ConfigError(f"protocol {protocol.name!r} has no value for {missing} of {method} {scheme} on {dataset}")
    return Resolved(protocol.name, family, {name: values[name] for name in PROTOCOL_FIELDS}, tuple(sources))


def method_params(name: str, method: str) -> dict[str, Any]:
    """Method parameters a protocol sets (e.g. ainfonce: the released losses); {} for 'unified'."""
    protocol = get_protocol(name)
    if not protocol.params:
        return {}
    return dict(protocol.params.get(family_of(protocol, method), {}))


def check_overrides(name: str, overridden: list[str] | tuple[str, ...]) -> None:
    """Under a protocol other than 'unified' the finetuning settings are the protocol's: a user override of
    one would be silently ignored, so it is refused with one line."""
    if name == "unified":
        return
    clashing = [field_name for field_name in overridden if field_name in PROTOCOL_CONFIG_FIELDS]
    if clashing:
        raise ConfigError(
            f"{clashing[0]} is invalid with --protocol {name}: the protocol sets the finetuning "
            f"settings per method and scheme; allowed --protocol unified to choose them"
        )
