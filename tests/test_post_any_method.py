"""``--post pp`` for any method: ``<method>++`` is the method, then DynACL++'s LP-AFT stage (bench.methodkit.post).

The ``++`` form is derived on demand (bench.methodkit.registry.derive_post,
bench.methodkit.variants.make_post_method): it
adds the stage's parameters, trains the branch the schemes finetune, and pretrains exactly as the method
itself, so a run of both pretrains once. The stage's arithmetic has its own tests (tests/test_post.py).
"""

from __future__ import annotations

import dataclasses
import json
import pickle

import pytest

from bench.cli.app import main
from bench.config import ConfigError, smoke_preset
from bench.methodkit import registry
from bench.methodkit.post import POST_FIELDS, SMOKE_POST_PARAMS
from bench.runs.plan import RunRequest, build_plan
from bench.store.results import ResultsStore
from bench.store.rows import load


def test_every_method_has_a_plus_plus_form_that_adds_the_stage():
    for name, branch in (("acl", "pgd"), ("rocl-ip", "normal"), ("simclr", "normal")):
        derived = registry.get(f"{name}++")
        base = registry.get(name)
        assert issubclass(derived, base) and derived.post == "pp" and derived.pretrains_as == name
        fields = {field.name for field in dataclasses.fields(derived.Params)}
        assert fields == {field.name for field in dataclasses.fields(base.Params)} | POST_FIELDS
        settings = derived(derived.make_params({})).post_settings(smoke_preset())
        assert settings.bn == branch == base.model.finetune_bn and settings.feature_bn == "normal"
        assert derived.published("smoke", "digits").params == {
            **base.published("smoke", "digits").params,
            **SMOKE_POST_PARAMS,
        }
        assert not derived.selected_by_all


def test_patterns_and_all_never_pick_up_derived_forms():
    registry.get("acl++")  # asked for once in this process
    assert "acl++" not in registry.resolve(["acl*"]) and "acl++" not in registry.resolve(["all"])
    assert "dynacl++" in registry.resolve(["dynacl*"])  # a method that registers its own ++ is a method
    assert "acl++-ip" not in registry.available()  # acl-ip++ is the A-InfoNCE variant's ++ form, one name
    with pytest.raises(ConfigError) as error:
        registry.get("nope")
    assert "'acl'" in str(error.value) and "'acl++'" not in str(error.value)


def test_plus_plus_pretrains_as_its_method_and_shares_the_encoder():
    plan = build_plan(RunRequest(methods=("acl", "acl++", "dynacl", "dynacl++")))
    runs = {run.method: run for run in plan.runs}
    assert runs["acl"].pretrain_key == runs["acl++"].pretrain_key and runs["acl"].run_id != runs["acl++"].run_id
    assert runs["dynacl"].pretrain_key == runs["dynacl++"].pretrain_key
    other = build_plan(RunRequest(methods=("acl++",), method_params={"*": {"post_epochs": "3"}})).runs[0]
    assert other.pretrain_key == runs["acl"].pretrain_key and other.run_id != runs["acl++"].run_id


def test_a_plus_plus_run_pickles_for_spawned_workers():
    """CUDA workers are spawned and get their run by pickle: the derived Params class must survive it."""
    (run,) = build_plan(RunRequest(methods=("acl++",), method_params={"*": {"post_epochs": "3"}})).runs
    copy = pickle.loads(pickle.dumps(run))
    assert copy.params == run.params and type(copy.params) is type(run.params) and copy.params.post_epochs == 3


def test_post_flag_selects_the_plus_plus_forms_and_refuses_a_method_with_its_own(capsys):
    assert registry.with_post("acl", "pp") == "acl++"
    with pytest.raises(ConfigError, match=r"--post pp is invalid for 'dynacl\+\+': it has its own post stage 'pp'"):
        registry.with_post("dynacl++", "pp")
    assert main(["run", "--methods", "acl", "rocl", "--post", "pp", "--dry-run", "--json"]) == 0
    methods = {json.loads(line)["method"] for line in capsys.readouterr().out.splitlines() if line.startswith("{")}
    assert methods == {"acl++", "rocl++"}
    assert main(["run", "--methods", "dynacl++", "--post", "pp", "--dry-run"]) == 2
    assert "own post stage" in capsys.readouterr().err


@pytest.mark.e2e
def test_a_post_run_reuses_the_method_encoder_and_finetunes_the_processed_one(tmp_path):
    results = tmp_path / "results"
    tiny = ["--epochs", "1", "--finetune-epochs", "1", "--n-eval", "16", "--schemes", "SLF", "--attacks", "clean"]
    tiny += ["--set", "evaluate.epsilon_curve=", "--set", "evaluate.corruptions=none", "--device", "cpu"]
    tiny += ["--jobs", "1", "--quiet", "--no-report", "--results-dir", str(results)]
    stage = ["--param", "post_head_epochs=1", "--param", "post_epochs=1", "--param", "post_batch_size=256"]
    assert main(["run", "--methods", "simclr", *tiny]) == 0
    assert main(["run", "--methods", "simclr", "--post", "pp", *stage, *tiny]) == 0
    dirs = {run.path.name.split("-smoke")[0]: run for run in ResultsStore(results).run_dirs()}
    plain, post = dirs["simclr"], dirs["simclr++"]
    assert json.loads(post.pretrain_summary.read_text())["encoder_from"] == plain.path.name
    assert post.post_encoder.exists() and json.loads(post.post_summary.read_text())["post"] == "pp"
    assert post.is_complete() and set(load(results / "results.csv")["method"]) == {"simclr", "simclr++"}
