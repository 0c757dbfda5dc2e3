"""The run plan: every method run of a request, resolved once, before any work.

``build_plan(request)`` turns what the user asked for (a preset, dotted overrides, method
parameters, methods, optionally several seeds and datasets) into a list of ``MethodRun``: for
each seed × dataset × method, its fully resolved and validated config, its hyperparameters, its
run id and its hashes. A product is expanded into single-seed, single-dataset requests first, so
a run's id is the same whether it was asked for alone or in a product. Everything downstream
(the pipeline, the worker processes, ``bench evaluate``, ``--dry-run``, the report's
directories) takes the plan and never rebuilds a config from strings.

Config precedence, lowest first: the preset, the method's published settings for the
preset and dataset (``Method.published``), then the user's overrides. Method parameters:
published < the protocol's (``bench.evaluation.protocols``: ``ainfonce`` sets the released losses) <
``--param``; AdvCL's pseudo-labels are resolved (and, with ``--download``, fetched and
verified) here, by ``bench.methodkit.downloads.resolve_pseudo_labels``. Under a protocol other than
``unified`` the finetuning settings are the protocol's, and overriding one is an error.

The post stage (DynACL++'s LP-AFT, ``bench.methodkit.post``) is a run option: ``--post pp`` or a name
spelled ``<name>++`` (``registry.spelling``) gives the run ``post='pp'``, its ``post_*`` parameters and
settings, and the label ``<name>++`` (id, rows, reports); its pretraining key is the method's own, so
``acl`` and ``acl++`` share one encoder. The run id is
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

from bench.coercion import field_types
from bench.config import ConfigError, RunConfig, config_hash, preset, set_field, to_dict, validate
from bench.evaluation import protocol_resolution
from bench.evaluation.finetune import scheme_settings
from bench.evaluation.scheme_run import scheme_evaluation
from bench.methodkit import registry
from bench.methodkit.downloads import resolve_pseudo_labels
from bench.methodkit.method import Method, MethodParams, Published
from bench.methodkit.post import POST_FIELDS, PostParams, PostSettings, published, run_params, stage_settings
from bench.runs.imported import ImportedEncoder
from bench.runs.plan_checks import check_protocol, check_unscoped_params
from bench.store.provenance import file_digest

# Fields that say where and how a run executes, not what it computes: outside the identity.
VOLATILE_FIELDS = ("methods", "device", "jobs", "results_dir", "reports_dir")
# Config sections that decide the pretrained encoder; finetuning and evaluation settings do not.
PRETRAINING_FIELDS = ("preset", "seed", "model", "attack", "pretrain", "method", "method_params")


# The names of ``MethodRun.inputs`` whose values are run ids: runs that must finish first (``MethodRun.upstream``).
RUN_INPUTS = ("teacher",)


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
    seeds: tuple[str, ...] = ()  # several seeds (raw values): the plan is seeds × datasets × methods
    datasets: tuple[str, ...] = ()  # several pretraining datasets
    track: tuple[str, ...] = ("local",)  # live trackers (bench.runs.tracking; not part of any run's identity)
    post: str = ""  # the post stage of every selected method ('' none, 'pp': ``--post pp``); '<name>++' asks per method


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
    # What the method's run needs besides its config, by name, as the method asks for it: 'teacher' (its
    # ``TeacherSpec``): the id of the run whose encoder it distils (DeACL), handed over by
    # ``bench.runs.stages.give_inputs``; 'pseudo_labels' (its ``pseudo_labels`` parameters): where the AdvCL
    # family's labels come from (bench.methodkit.downloads.PseudoLabelSource), recorded in the identity and the
    # rows' flags. The names in ``RUN_INPUTS`` hold run ids: ``upstream``.
    inputs: dict[str, Any] = field(default_factory=dict)
    imported: ImportedEncoder | None = None  # bench evaluate --checkpoint: no training (bench.runs.imported)
    # The post stage ('' none, 'pp': LP-AFT, bench.evaluation.post), its parameters (identity, not pretraining key)
    # and resolved settings; ``registered``: the method that pretrains (``acl`` for ``acl++``; '' = ``method``).
    post: str = ""
    post_params: PostParams | None = None
    post_settings: PostSettings | None = None
    registered: str = ""
    # the single-seed, single-dataset request it was resolved from (its config.yaml: bench.runs.experiment_file)
    request: RunRequest | None = field(default=None, compare=False, repr=False)

    @property
    def method_class(self) -> type[Method]:
        return registry.get(self.registered or self.method)

    def all_params(self) -> dict[str, Any]:
        """The method's parameters, after the post stage's when it has one (the identity's ``method_params``)."""
        post = dataclasses.asdict(self.post_params) if self.post_params is not None else {}
        return {**post, **dataclasses.asdict(self.params)}

    @property
    def upstream(self) -> dict[str, str]:
        """The runs that must finish before this one starts, by input name (their encoders are its inputs)."""
        return {name: self.inputs[name] for name in RUN_INPUTS if name in self.inputs}

    def published_row(self) -> Published:
        """The published row the plan resolved the run under: its label's (``dynacl++``: the form's rows)."""
        config = self.config
        return published(self.method_class, registry.spelling(self.method), config.preset, config.data.name)

    def settings_note(self) -> str:
        """'' when its method has a published row for the preset, else the line ``--dry-run`` prints: it runs
        under the harness defaults and the user's flags, which may be far from its paper's (a plugin without PAPER)."""
        config, pretrain = self.config, self.config.pretrain
        if self.published_row().source:
            return ""
        return (
            f"{self.run_id}  {self.method} has no published {config.preset} settings: it runs under the harness "
            f"defaults and your flags (optimizer {pretrain.optimizer} lr {pretrain.lr:g}, {pretrain.epochs} epochs, "
            f"batch {pretrain.batch_size})"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description (``--dry-run --json`` prints one per line and scheme)."""
        return {
            "run_id": self.run_id,
            "method": self.method,
            "preset": self.config.preset,
            "dataset": self.config.data.name,
            "eval_dataset": self.config.data.eval_name or self.config.data.name,
            "seed": self.config.seed,
            "protocol": self.config.finetune.protocol,
            "config_hash": self.config_hash,
            "pretrain_key": self.pretrain_key,
            "config": to_dict(self.config),
            "params": self.all_params(),
            "flags": list(self.flags),
            "pseudo_labels": labels.to_dict() if (labels := self.inputs.get("pseudo_labels")) else None,
        }

    def scheme_dicts(self) -> list[dict[str, Any]]:
        """One description per finetuning scheme, with its resolved settings (``--dry-run``); one with
        ``scheme`` None when the run only pretrains."""

        run = self.to_dict()
        described = []
        for scheme in self.config.finetune.schemes or (None,):
            settings = scheme_settings(self.config, scheme, self.method) if scheme else None
            # the evaluation settings the run will use (bench.evaluation.scheme_run.scheme_evaluation), not a copy
            evaluate = scheme_evaluation(self.config.evaluate, settings) if settings else self.config.evaluate
            described.append(
                {
                    **run,
                    "scheme": scheme,
                    "finetune": settings.to_dict() if settings else None,
                    "evaluate": {
                        "epsilon": evaluate.epsilon,
                        "attacks": list(evaluate.attacks),
                        "pgd_steps": evaluate.pgd_steps,
                        "n_eval": evaluate.n_eval,
                        "pgd_step_size": evaluate.step_size,
                    },
                }
            )
        return described


@dataclass(frozen=True)
class RunPlan:
    """The resolved request: its method runs plus the settings shared by all of them."""

    base: RunConfig  # preset + overrides (first seed, dataset), no method's settings: directories, device, jobs
    runs: tuple[MethodRun, ...]
    force: bool = False
    resume: bool = False
    track: tuple[str, ...] = ("local",)  # the trackers each run reports to (bench.runs.tracking)

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


def method_values(
    method: type[Method], config: RunConfig, request: RunRequest, spelled: registry.Spelling | None = None
) -> dict[str, Any]:
    """Raw parameter values: published settings < the protocol's (ainfonce: the released losses) < ``--param``
    (scoped by the run's label, ``acl++`` for the method with the post stage, whose ``post_*`` it reads too)."""
    spelled = spelled or registry.spelling(method.name)
    label = spelled.name
    values = dict(published(method, spelled, config.preset, config.data.name).params)
    values.update(protocol_resolution.method_params(config.finetune.protocol, label))
    unread = method.unread_params()
    # An unscoped --param reaches the methods that read it (acl's id is the same with or without alpha=).
    values.update({key: value for key, value in request.method_params.get("*", {}).items() if key not in unread})
    for key, value in request.method_params.get(label, {}).items():
        if key in unread:
            known = set(field_types(method.Params)) | (POST_FIELDS if spelled.post else set())
            raise ConfigError(
                f"--param {label}:{key}={value} is invalid: {label} never reads {key!r}; "
                f"allowed {sorted(known - unread)}"
            )
        values[key] = value
    return values


def identity(
    method: type[Method], config: RunConfig, params: MethodParams, label: str = "", post: PostParams | None = None
) -> dict[str, Any]:
    """Everything that decides a run's numbers (the hashed payload): under the run's label (``acl++``), with
    the post stage's parameters before the method's (the order of the earlier ``<name>++`` classes' fields)."""
    payload = to_dict(config)
    for volatile in VOLATILE_FIELDS:
        payload.pop(volatile)
    payload["data"].pop("download")  # whether missing files may be fetched: how, not what (they are verified)
    payload["pretrain"].pop("host_sync")  # when the loop reads its logged numbers: how, not what (same numbers)
    if not payload["pretrain"]["compile_attack"]:  # off: the ids of every run before the switch existed
        payload["pretrain"].pop("compile_attack")
    payload["method"] = label or method.name
    payload["method_params"] = {**(dataclasses.asdict(post) if post is not None else {}), **dataclasses.asdict(params)}
    return payload


def pretraining_key(payload: dict[str, Any]) -> str:
    """Hash of everything that decides a pretrained encoder: runs that differ only in finetuning
    or evaluation settings (ε, attacks, n_eval, schemes…) share it, and share the encoder."""
    data = payload["data"]
    return config_hash(
        {
            **{name: payload[name] for name in PRETRAINING_FIELDS},
            "data": {"name": data["name"], "image_size": data["image_size"]},
        }
    )


def pretraining_payload(spelled: registry.Spelling, params: MethodParams, payload: dict[str, Any]) -> dict[str, Any]:
    """The identity as pretraining sees it: a run with the post stage under the method that pretrains
    (``acl`` for ``acl++``, ``dynacl-ip`` for ``dynacl++-ip``) and without the stage's parameters, so that
    runs with and without the stage share one encoder.

    ``quirks='official'`` that only the published form accepts (DynACL++'s TRADES attack start, not DynACL's
    pretraining: ``bench.methodkit.post.run_params``) changes the stage alone: the method pretrains as with
    ``quirks='none'``, and shares that encoder."""
    if not spelled.post:
        return payload
    pretrains = dataclasses.asdict(params)
    if pretrains.get("quirks") == "official" and not registry.get(spelled.method).variant.official_quirks:
        pretrains["quirks"] = "none"
    return {**payload, "method": spelled.method, "method_params": pretrains}


def resolve_run(
    method: type[Method],
    request: RunRequest,
    base: RunConfig,
    teacher: MethodRun | None = None,
    spelled: registry.Spelling | None = None,
) -> MethodRun:
    """One method's config (its published pretraining settings in place), params, id and hashes.
    ``spelled``: the name it was asked for (``acl++``: with the post stage; default: the method's own).

    A distilling method's identity includes what it distils from (the teacher run's pretraining
    key, or the digest of a ``teacher=`` file), so another teacher gives another run id."""
    spelled = spelled or registry.spelling(method.name)
    label = spelled.name
    config = assemble(request, dict(published(method, spelled, base.preset, base.data.name).pretrain))
    check_protocol(method, config, label)
    values, labels = resolve_pseudo_labels(
        label, method.Params, config, method_values(method, config, request, spelled), fetch=not request.dry_run
    )
    params, post = run_params(method, spelled, values)
    payload = identity(method, config, params, label, post)
    if teacher is not None:
        payload["teacher"] = {"method": teacher.method, "pretrain_key": teacher.pretrain_key}
    elif method.teacher is not None and getattr(params, "teacher", ""):
        path = Path(params.teacher).expanduser()
        if not path.is_file():
            raise ConfigError(f"teacher={str(path)!r} is invalid: allowed an existing encoder file")
        payload["teacher"] = {"file_sha256": file_digest(path)}
    digest = config_hash({key: value for key, value in payload.items() if key != "seed"})
    run_id = f"{label}-{config.preset}-{config.data.name}-s{config.seed}-{digest}"
    return MethodRun(
        label,
        config,
        params,
        run_id,
        digest,
        pretraining_key(pretraining_payload(spelled, params, payload)),
        payload,
        flags=(labels.flag,) if labels else (),
        inputs={
            **({"pseudo_labels": labels} if labels else {}),
            **({"teacher": teacher.run_id} if teacher is not None else {}),
        },
        post=spelled.post,
        post_params=post,
        post_settings=stage_settings(method, spelled, config, params, post),
        registered=spelled.method if spelled.method != label else "",
        request=request,
    )


def teacher_run(student: type[Method], request: RunRequest, base: RunConfig) -> MethodRun:
    """The run a distilling method's teacher comes from: its ``teacher.method`` under the same
    preset, data, overrides and seed (the user's ``--param`` for that method, and the '*' ones it has)."""
    teacher = registry.get(student.teacher.method)
    known = field_types(teacher.Params)
    params = {
        "*": {key: value for key, value in request.method_params.get("*", {}).items() if key in known},
        teacher.name: request.method_params.get(teacher.name, {}),
    }
    return resolve_run(teacher, dataclasses.replace(request, method_params=params), base)


def resolve_method(
    method: type[Method], request: RunRequest, base: RunConfig, spelled: registry.Spelling | None = None
) -> list[MethodRun]:
    """The method's run, preceded by its teacher's run when it distils from one and no teacher file is given."""
    run = resolve_run(method, request, base, spelled=spelled)
    if method.teacher is None or getattr(run.params, "teacher", ""):
        return [run]
    teacher = teacher_run(method, request, base)
    return [teacher, resolve_run(method, request, base, teacher, spelled)]


def expand(request: RunRequest) -> list[RunRequest]:
    """One single-seed, single-dataset request per (seed, dataset) of ``request.seeds × request.datasets``.

    Each is what ``--seed S --dataset D`` alone would give (the same overrides), so a run's id
    does not depend on whether it was asked for alone or as part of a product."""
    products = []
    for flag, field_name, values in (("--seeds", "seed", request.seeds), ("--datasets", "data.name", request.datasets)):
        if values and field_name in request.overrides:
            raise ConfigError(
                f"{flag} {' '.join(map(str, values))} is invalid together with "
                f"{field_name}={request.overrides[field_name]!r}: allowed one of the two forms"
            )
        products.append([(field_name, value) for value in values] or [None])
    requests = []
    for seed in products[0]:
        for dataset in products[1]:
            overrides = dict(request.overrides)
            overrides.update(dict(item for item in (seed, dataset) if item is not None))
            requests.append(dataclasses.replace(request, overrides=overrides, seeds=(), datasets=()))
    return requests


def build_plan(request: RunRequest) -> RunPlan:
    """Resolve and check every method run of ``request`` (seeds × datasets × methods, in that order);
    any bad value fails here, before any work."""
    if request.post:  # --post pp: every selected method with the stage, spelled so (acl -> acl++)
        methods = tuple(
            registry.with_post(name, request.post) for name in registry.resolve(request.methods, post=request.post)
        )
        request = dataclasses.replace(request, methods=methods, post="")
    singles = expand(request)
    base = assemble(singles[0])
    protocol_resolution.check_overrides(base.finetune.protocol, list(request.overrides))
    names = registry.resolve(base.methods)
    unknown_scopes = sorted(scope for scope in request.method_params if scope != "*" and scope not in names)
    if unknown_scopes:
        raise ConfigError(
            f"--param scope {unknown_scopes[0]!r} is invalid: it names no selected method; allowed {names}"
        )
    check_unscoped_params(request, names)
    runs, teachers = [], []
    for single in singles:
        single_base = assemble(single)
        for name in names:
            *needed, run = resolve_method(registry.get(name), single, single_base, registry.spelling(name))
            runs.append(run)
            teachers += needed
    repeated = sorted({run.run_id for run in runs if sum(other.run_id == run.run_id for other in runs) > 1})
    if repeated:
        given = [
            f"{flag} {' '.join(map(str, values))}"
            for flag, values in (("--seeds", request.seeds), ("--datasets", request.datasets))
            if values
        ]
        raise ConfigError(f"{' '.join(given)} is invalid: run {repeated[0]} comes twice; allowed distinct values")
    # Teachers first (a student waits for its teacher's encoder), each once, even when also selected.
    ordered = {run.run_id: run for run in teachers}
    ordered.update({run.run_id: run for run in runs if run.run_id not in ordered})
    return RunPlan(base, tuple(ordered.values()), force=request.force, resume=request.resume, track=request.track)
