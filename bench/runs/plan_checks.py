"""Checks a plan makes before anything runs: each one turns a run that would fail (or silently change
nothing) late into a one-line error while the plan is built (``bench.runs.plan``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.coercion import field_types
from bench.config import ConfigError, RunConfig
from bench.evaluation.finetune import scheme_settings
from bench.methodkit import registry
from bench.methodkit.method import Method

if TYPE_CHECKING:
    from bench.runs.plan import RunRequest


def check_protocol(method: type[Method], config: RunConfig, label: str = "") -> None:
    """Every scheme's settings resolve under the run's protocol (the method is covered; dual-BN AFF has its
    branches), so a plan that would fail in finetuning fails here."""

    label = label or method.name
    for scheme in config.finetune.schemes:
        settings = scheme_settings(config, scheme, label)
        if settings.dual_bn and (method.model.finetune_bn == "normal" or "normal" not in method.model.branches):
            raise ConfigError(
                f"protocol {settings.protocol!r} is invalid for {label}: its {scheme} needs BN "
                f"branches 'normal' and a finetuning branch, the method has {list(method.model.branches)}"
            )


def check_unscoped_params(request: RunRequest, names: list[str]) -> None:
    """An unscoped ``--param KEY=V`` must be read by at least one selected method (else it is a typo
    or a knob of a variant that was not selected, and would silently change nothing)."""
    methods = [registry.get(name) for name in names]
    for key, value in request.method_params.get("*", {}).items():
        readers = [cls for cls in methods if key in field_types(cls.Params) and key not in cls.unread_params()]
        if not readers and any(key in field_types(cls.Params) for cls in methods):
            read = sorted({name for cls in methods for name in set(field_types(cls.Params)) - cls.unread_params()})
            raise ConfigError(
                f"--param {key}={value} is invalid: no selected method reads {key!r} "
                f"(e.g. alpha is read by the -ip variants only); allowed {read}"
            )
