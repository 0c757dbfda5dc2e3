"""The run plan: every method run of a request, resolved once, before any work.

``build_plan(request)`` turns what the user asked for (a preset, dotted overrides, method
parameters, methods) into a list of ``MethodRun``: for each method, its fully resolved and
validated config, its hyperparameters, its run id and its hashes. Everything downstream
(the pipeline, the worker processes, ``bench evaluate``, ``--dry-run``, the report's
directories) takes the plan and never rebuilds a config from strings.

Config precedence, lowest first: the preset, the method's published settings for the
preset and dataset (``Method.published``), then the user's overrides. Method parameters:
published < the protocol's (``bench.protocols``: ``ainfonce`` sets the released losses) <
``--param``; AdvCL's pseudo-labels are resolved (and, with ``--download``, fetched and
verified) here, by ``bench.downloads.resolve_pseudo_labels``. Under a protocol other than
``unified`` the finetuning settings are the protocol's, and overriding one is an error. The run id is
``<method>-<preset>-<dataset>-s<seed>-<hash>``; the hash covers the whole resolved config
and the method's parameters, but not the seed (so the seeds of one configuration share it,
and the report averages exactly those) and not where or how the run executes (device,
jobs, directories).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import protocols, registry
from bench.config import ConfigError, RunConfig, config_hash, preset, set_field, to_dict, validate
from bench.downloads import PseudoLabelSource, resolve_pseudo_labels
from bench.method import Method, MethodParams

# Fields that say where and how a run executes, not what it computes: outside the identity.
VOLATILE_FIELDS = ("methods", "device", "jobs", "results_dir", "reports_dir")
# Config sections that decide the pretrained encoder; finetuning and evaluation settings do not.
PRETRAINING_FIELDS = ("preset", "seed", "model", "attack", "pretrain", "method", "method_params")


@dataclass
class RunRequest:
    """What the user asked for, as given: a preset, dotted overrides, method parameters, methods."""

    preset: str = "smoke"
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted field → raw value
    method_params: dict[str, dict[str, str]] = field(default_factory=dict)  # method or '*' → {key: raw value}
    methods: tuple[str, ...] = ("all",)
    force: bool = False
    resume: bool = False
    dry_run: bool = False  # resolve and validate only: nothing is fetched or written


@dataclass(frozen=True)
class MethodRun:
    """One method run, fully resolved: what the pipeline, a worker or a scheduler needs."""

    method: str
    config: RunConfig
    params: MethodParams
    run_id: str
    config_hash: str  # of the identity without the seed
    pretrain_key: str  # of the identity's pretraining part: runs sharing it share an encoder
    identity: dict[str, Any]  # what the hashes cover (JSON-serialisable)
    flags: tuple[str, ...] = ()  # carried by every row of the run (e.g. pseudo_labels:released-b28763e)
    pseudo_labels: PseudoLabelSource | None = None  # the AdvCL family's labels (bench.downloads)

    @property
    def method_class(self) -> type[Method]:
        return registry.get(self.method)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description (``--dry-run --json`` prints one per line and scheme)."""
        return {"run_id": self.run_id, "method": self.method, "preset": self.config.preset,
                "dataset": self.config.data.name, "eval_dataset": self.config.data.eval_name or self.config.data.name,
                "seed": self.config.seed, "protocol": self.config.finetune.protocol, "config_hash": self.config_hash,
                "pretrain_key": self.pretrain_key, "config": to_dict(self.config),
                "params": dataclasses.asdict(self.params), "flags": list(self.flags),
                "pseudo_labels": self.pseudo_labels.to_dict() if self.pseudo_labels else None}

    def scheme_dicts(self) -> list[dict[str, Any]]:
        """One description per finetuning scheme, with its resolved settings (``--dry-run``); one with
        ``scheme`` None when the run only pretrains."""
        from bench.finetune import scheme_settings

        run = self.to_dict()
        described = []
        for scheme in self.config.finetune.schemes or (None,):
            settings = scheme_settings(self.config, scheme, self.method) if scheme else None
            evaluate = self.config.evaluate
            step = settings.eval_step_size if settings and settings.eval_step_size is not None else evaluate.step_size
            described.append({**run, "scheme": scheme, "finetune": settings.to_dict() if settings else None,
                              "evaluate": {"epsilon": evaluate.epsilon, "attacks": list(evaluate.attacks),
                                           "pgd_steps": evaluate.pgd_steps, "n_eval": evaluate.n_eval,
                                           "pgd_step_size": step}})
        return described


@dataclass(frozen=True)
class RunPlan:
    """The resolved request: its method runs plus the settings shared by all of them."""

    base: RunConfig  # preset + overrides, without any method's settings: directories, device, jobs, data
    runs: tuple[MethodRun, ...]
    force: bool = False
    resume: bool = False

    @property
    def results_dir(self) -> Path:
        return Path(self.base.results_dir)

    @property
    def reports_dir(self) -> Path:
        return Path(self.base.reports_dir)


def assemble(request: RunRequest, pretrain_settings: dict[str, Any] | None = None) -> RunConfig:
    """The preset, then a method's published pretraining settings, then the user's overrides; validated."""
    config = preset(request.preset)
    for key, value in (pretrain_settings or {}).items():
        set_field(config, f"pretrain.{key}", value)
    for dotted, value in request.overrides.items():
        set_field(config, dotted, value)
    config.methods = tuple(request.methods)
    return validate(config)


def method_values(method: type[Method], config: RunConfig, request: RunRequest) -> dict[str, Any]:
    """Raw parameter values: published settings < the protocol's (ainfonce: the released losses) < ``--param``."""
    values = dict(method.published(config.preset, config.data.name).params)
    values.update(protocols.method_params(config.finetune.protocol, method.name))
    for scope in ("*", method.name):
        values.update(request.method_params.get(scope, {}))
    return values


def resolve_params(method: type[Method], config: RunConfig, request: RunRequest) -> MethodParams:
    """The method's hyperparameters: Params defaults < published settings < protocol < the user's ``--param``."""
    return method.make_params(method_values(method, config, request))


def check_protocol(method: type[Method], config: RunConfig) -> None:
    """Every scheme's settings resolve under the run's protocol (the method is covered; dual-BN AFF has its
    branches), so a plan that would fail in finetuning fails here."""
    from bench.finetune import scheme_settings

    for scheme in config.finetune.schemes:
        settings = scheme_settings(config, scheme, method.name)
        if settings.dual_bn and (method.finetune_bn == "normal" or "normal" not in method.bn_branches):
            raise ConfigError(f"protocol {settings.protocol!r} is invalid for {method.name}: its {scheme} needs BN "
                              f"branches 'normal' and a finetuning branch, the method has {list(method.bn_branches)}")


def identity(method: type[Method], config: RunConfig, params: MethodParams) -> dict[str, Any]:
    """Everything that decides a run's numbers (the hashed payload)."""
    payload = to_dict(config)
    for volatile in VOLATILE_FIELDS:
        payload.pop(volatile)
    payload["data"].pop("download")  # whether missing files may be fetched: how, not what (they are verified)
    payload["method"] = method.name
    payload["method_params"] = dataclasses.asdict(params)
    return payload


def pretraining_key(payload: dict[str, Any]) -> str:
    """Hash of everything that decides a pretrained encoder: runs that differ only in finetuning
    or evaluation settings (ε, attacks, n_eval, schemes…) share it, and share the encoder."""
    data = payload["data"]
    return config_hash({**{name: payload[name] for name in PRETRAINING_FIELDS},
                        "data": {"name": data["name"], "image_size": data["image_size"]}})


def resolve_run(method: type[Method], request: RunRequest, base: RunConfig) -> MethodRun:
    """One method's config (its published pretraining settings in place), params, id and hashes."""
    config = assemble(request, dict(method.published(base.preset, base.data.name).pretrain))
    check_protocol(method, config)
    values, labels = resolve_pseudo_labels(method.name, method.Params, config, method_values(method, config, request),
                                           fetch=not request.dry_run)
    params = method.make_params(values)
    payload = identity(method, config, params)
    digest = config_hash({key: value for key, value in payload.items() if key != "seed"})
    run_id = f"{method.name}-{config.preset}-{config.data.name}-s{config.seed}-{digest}"
    return MethodRun(method.name, config, params, run_id, digest, pretraining_key(payload), payload,
                     flags=(labels.flag,) if labels else (), pseudo_labels=labels)


def build_plan(request: RunRequest) -> RunPlan:
    """Resolve and check every method run of ``request``; any bad value fails here, before any work."""
    base = assemble(request)
    protocols.check_overrides(base.finetune.protocol, list(request.overrides))
    names = registry.resolve(base.methods)
    unknown_scopes = sorted(scope for scope in request.method_params if scope != "*" and scope not in names)
    if unknown_scopes:
        raise ConfigError(f"--param scope {unknown_scopes[0]!r} is invalid: it names no selected method; "
                          f"allowed {names}")
    runs = tuple(resolve_run(registry.get(name), request, base) for name in names)
    return RunPlan(base, runs, force=request.force, resume=request.resume)
