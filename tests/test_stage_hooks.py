"""The harness calls the method hooks of the newer methods where they belong (bench.runs.stages, bench.runs.train).

- ``StepContext.epochs``: every step sees the run's total pretraining epochs;
- ``Method.encoder_for_finetuning``: the encoder the pretraining stage stores (and a donor is
  loaded into) is the hook's, not the trained model (DynACL stores its key encoder);
- the post stage (``--post pp``, ``MethodRun.post_settings``): a run with it gets
  ``bench.evaluation.post.post_process`` on the stored encoder, its result is stored apart (``encoder_post.pt``,
  ``post.json``) and is what every scheme finetunes; finetuning before the post stage has finished is a
  ``StageError``.
A throw-away method keeps it cheap; ``post_process`` is replaced by a recorder (its own tests
are tests/test_post.py).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from tiny_run import TINY as TINY_RUN

import bench.runs.stages as stages
from bench.cli.app import main
from bench.engine.losses import nt_xent
from bench.methodkit import registry
from bench.methodkit.method import Method
from bench.methodkit.registry import register
from bench.runs.plan import RunRequest, build_plan
from bench.store.results import ResultsStore

TINY = [*TINY_RUN, "--set", "finetune.batch_size=512", "--jobs", "1"]
STAGE = {"post_clusters": "2", "post_head_epochs": "0", "post_epochs": "0", "post_batch_size": "64"}
HOOK_VALUE, POST_VALUE = 0.25, 0.75


def filled_copy(model, value: float):
    """A copy of ``model`` whose projector weights all equal ``value`` (a mark that training never makes)."""
    marked = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in marked.projector.parameters():
            parameter.fill_(value)
    return marked


@pytest.fixture
def hook_method():
    seen = {"epochs": set()}

    @register("hook-test")
    class HookMethod(Method):
        description = "throw-away method with a finetuning encoder and a post stage"
        selected_by_all = False

        def training_step(self, model, images, ctx):
            seen["epochs"].add(ctx.epochs)
            z1, z2 = model(images).chunk(2)
            return nt_xent(z1, z2), {}

        def encoder_for_finetuning(self, model):
            return filled_copy(model, HOOK_VALUE)

    yield HookMethod, seen
    registry.unregister("hook-test")


def projector_values(state: dict) -> set[float]:
    return {
        round(value, 6)
        for key, tensor in state.items()
        if key.startswith("projector.") and tensor.is_floating_point()
        for value in tensor.flatten().tolist()
    }


@pytest.mark.e2e
def test_stages_store_the_finetuning_encoder_post_process_it_and_finetune_the_result(
    hook_method, tmp_path, monkeypatch
):
    _, seen = hook_method
    calls, finetuned = [], []

    def fake_post_process(model, train_images, settings, device, generator):
        calls.append(
            {"projector": projector_values(model.state_dict()), "images": train_images.shape[0], "settings": settings}
        )
        return filled_copy(model, POST_VALUE)

    original = stages.finetune_and_evaluate_scheme

    def recording_finetune(model, *args, **kwargs):
        finetuned.append(projector_values(model.state_dict()))
        return original(model, *args, **kwargs)

    monkeypatch.setattr(stages, "post_process", fake_post_process)
    monkeypatch.setattr(stages, "finetune_and_evaluate_scheme", recording_finetune)
    results = tmp_path / "r"
    stage = [item for key, value in STAGE.items() for item in ("--param", f"{key}={value}")]
    command = ["run", "--methods", "hook-test", "--post", "pp", *stage, "--results-dir", str(results), "--no-report"]
    assert main([*command, *TINY]) == 0
    assert seen["epochs"] == {1}  # StepContext.epochs = pretrain.epochs on every step
    (run_dir,) = ResultsStore(results).run_dirs()
    stored = torch.load(run_dir.encoder, weights_only=True)["model"]
    trained = torch.load(run_dir.checkpoint, weights_only=True)["model"]
    assert projector_values(stored) == {HOOK_VALUE} and projector_values(trained) != {HOOK_VALUE}
    assert len(calls) == 1 and calls[0]["projector"] == {HOOK_VALUE} and calls[0]["images"] > 0
    assert calls[0]["settings"].clusters == 2
    assert projector_values(torch.load(run_dir.post_encoder, weights_only=True)["model"]) == {POST_VALUE}
    assert json.loads(run_dir.post_summary.read_text())["settings"]["clusters"] == 2
    assert finetuned == [{POST_VALUE}]  # the scheme finetuned the post stage's encoder
    assert run_dir.is_complete()


def test_finetuning_before_the_post_stage_is_a_stage_error(hook_method, tmp_path):
    request = RunRequest(overrides={"pretrain.epochs": 1}, methods=("hook-test++",), method_params={"*": STAGE})
    (run,) = build_plan(request).runs
    run_dir = ResultsStore(tmp_path).run(run.run_id)
    with pytest.raises(stages.StageError, match="the post stage has not finished"):
        stages.finetuning_encoder(run, run_dir)
    (plain,) = build_plan(RunRequest(methods=("simclr",))).runs
    assert stages.finetuning_encoder(plain, ResultsStore(tmp_path).run(plain.run_id)).name == "encoder.pt"


def test_a_dynacl_run_stores_and_reloads_its_key_encoder(tmp_path):
    """DynACL trains a (query, key) pair; encoder.pt holds the key alone and the finetune stage loads it."""
    (run,) = build_plan(RunRequest(methods=("dynacl",))).runs
    method = run.method_class(run.params)
    model = method.build_model(run.config.model.arch, 3)
    with torch.no_grad():  # make the key differ from the query, as after training
        for parameter in model.key.parameters():
            parameter.add_(0.5)
    encoder = method.encoder_for_finetuning(model)
    run_dir = ResultsStore(tmp_path).run(run.run_id).create()
    torch.save(stages.encoder_checkpoint(method, encoder, run, 3).to_state(), run_dir.encoder)
    _, loaded = stages.load_run_encoder(run, run_dir)
    assert not hasattr(loaded, "key")
    key_state, loaded_state = model.key.state_dict(), loaded.state_dict()
    assert set(key_state) == set(loaded_state)
    assert all(torch.equal(key_state[name], loaded_state[name]) for name in key_state)
    query_state = model.state_dict()
    weights = [name for name in key_state if name.endswith("weight")]
    assert weights and not any(torch.equal(query_state[name], loaded_state[name]) for name in weights)
