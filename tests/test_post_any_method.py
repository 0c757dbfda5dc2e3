"""``--post pp`` for any method: ``<method>++`` is the method, then DynACL++'s LP-AFT stage (bench.methodkit.post).

The post stage is a run option carried by the plan (``MethodRun.post``, ``post_params``, ``post_settings``),
never a class: ``<method>++`` spells the method with it (bench.methodkit.registry.spelling). The run adds the
stage's parameters, trains the branch the schemes finetune, and pretrains exactly as the method itself, so a
run of both pretrains once. The stage's arithmetic has its own tests (tests/test_post.py).
"""

from __future__ import annotations

import dataclasses
import json
import pickle

import pytest

from bench.cli.app import main
from bench.config import ConfigError
from bench.methodkit import registry
from bench.methodkit.post import POST_FIELDS, SMOKE_POST_PARAMS, published
from bench.runs.plan import RunRequest, build_plan
from bench.store.results import ResultsStore
from bench.store.rows import load


def test_every_method_has_a_plus_plus_form_that_adds_the_stage():
    listed = dict(registry.available())
    for name, branch in (("acl", "pgd"), ("rocl-ip", "normal"), ("simclr", "normal")):
        spelled, base = registry.spelling(f"{name}++"), registry.get(name)
        assert (spelled.method, spelled.post, spelled.form, spelled.listed) == (name, "pp", "", False)
        assert registry.get(f"{name}++") is base  # the method's own class: none is made for the stage
        (run,) = build_plan(RunRequest(methods=(f"{name}++",))).runs
        assert (run.method, run.registered, run.post, type(run.params)) == (f"{name}++", name, "pp", base.Params)
        fields = {field.name for field in dataclasses.fields(base.Params)}
        assert (
            set(run.all_params()) == fields | POST_FIELDS and set(run.identity["method_params"]) == fields | POST_FIELDS
        )
        assert run.post_settings.bn == branch == base.model.finetune_bn and run.post_settings.feature_bn == "normal"
        assert published(base, spelled, "smoke", "digits").params == {
            **base.published("smoke", "digits").params,
            **SMOKE_POST_PARAMS,
        }
        assert f"{name}++" not in registry.resolve(["all"])
    assert registry.available() == listed  # asking for a ++ form registers nothing


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
    # quirks='official' that only the published form accepts changes its post stage alone (DynACL++'s TRADES
    # attack start): its run is another, its encoder DynACL's; DynACL-AIR's own official quirks change pretraining
    official = {"*": {"quirks": "official"}}
    quirky = build_plan(RunRequest(methods=("dynacl++",), method_params=official)).runs[0]
    assert quirky.params.quirks == "official" and quirky.post_settings.attack_start == "clean"
    assert quirky.pretrain_key == runs["dynacl"].pretrain_key and quirky.run_id != runs["dynacl++"].run_id
    (air_plus, air) = build_plan(RunRequest(methods=("dynacl-air++", "dynacl-air"), method_params=official)).runs
    assert (
        air_plus.pretrain_key
        == air.pretrain_key
        != build_plan(RunRequest(methods=("dynacl-air",))).runs[0].pretrain_key
    )


def test_a_plus_plus_run_pickles_for_spawned_workers():
    """CUDA workers are spawned and get their run by pickle: the derived Params class must survive it."""
    (run,) = build_plan(RunRequest(methods=("acl++",), method_params={"*": {"post_epochs": "3"}})).runs
    copy = pickle.loads(pickle.dumps(run))
    assert copy.params == run.params and copy.post_params == run.post_params and copy.post_params.post_epochs == 3
    assert copy.post_settings == run.post_settings and copy.post_settings.epochs == 3


def test_post_flag_selects_the_plus_plus_forms_and_refuses_a_method_with_its_own(capsys):
    assert registry.with_post("acl", "pp") == "acl++"
    with pytest.raises(ConfigError, match=r"--post pp is invalid for 'dynacl\+\+': it has its own post stage 'pp'"):
        registry.with_post("dynacl++", "pp")
    assert main(["run", "--methods", "acl", "rocl", "--post", "pp", "--dry-run", "--json"]) == 0
    methods = {json.loads(line)["method"] for line in capsys.readouterr().out.splitlines() if line.startswith("{")}
    assert methods == {"acl++", "rocl++"}
    assert main(["run", "--methods", "dynacl++", "--post", "pp", "--dry-run"]) == 2
    assert "own post stage" in capsys.readouterr().err
    # a wildcard also matches the listed post forms (dynacl++, dynacl-air++...): each method gets the stage once
    assert registry.resolve(["dynacl*"], post="pp") == [n for n in registry.resolve(["dynacl*"]) if "++" not in n]
    assert main(["run", "--methods", "dynacl*", "--post", "pp", "--dry-run", "--json"]) == 0
    methods = [json.loads(line)["method"] for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert set(methods) == {registry.with_post(name, "pp") for name in registry.resolve(["dynacl*"], post="pp")}
    assert {"dynacl++", "dynacl-air++", "dynacl-ip++"} <= set(methods)  # as when each is named with --post


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


def test_post_is_a_request_option_with_the_ids_of_the_plus_plus_spelling():
    """``--post pp`` is ``RunRequest.post``: the plan gives each selected method the stage, and the runs are
    those the ``<name>++`` spelling gives (same ids, pretraining keys, stage parameters and settings)."""
    option = build_plan(RunRequest(methods=("acl", "dynacl-ip"), post="pp", method_params={"*": {"post_epochs": "3"}}))
    spelled = build_plan(RunRequest(methods=("acl++", "dynacl-ip++"), method_params={"*": {"post_epochs": "3"}}))
    assert [run.run_id for run in option.runs] == [run.run_id for run in spelled.runs]
    for ours, theirs in zip(option.runs, spelled.runs, strict=True):
        assert (ours.post, ours.post_params, ours.post_settings) == (
            theirs.post,
            theirs.post_params,
            theirs.post_settings,
        )
        assert ours.post_settings.epochs == 3 and ours.pretrain_key == theirs.pretrain_key


def test_a_published_forms_variant_pretrains_as_the_variant():
    """``dynacl++-ip`` is DynACL-IP with DynACL++'s stage: it shares DynACL-IP's encoder, never DynACL's."""
    runs = {run.method: run for run in build_plan(RunRequest(methods=("dynacl", "dynacl-ip", "dynacl++-ip"))).runs}
    assert runs["dynacl++-ip"].registered == "dynacl-ip" and runs["dynacl++-ip"].post == "pp"
    assert runs["dynacl++-ip"].pretrain_key == runs["dynacl-ip"].pretrain_key != runs["dynacl"].pretrain_key
    assert registry.spelling("dynacl++-ip").form == "dynacl++"  # DynACL++'s rows and released quirk apply


def test_a_method_declaring_the_old_post_members_is_refused():
    """``post``/``pretrains_as``/``post_settings`` would now change nothing: registering one is a one-line error."""

    class OldPlusPlus(registry.get("simclr")):
        def post_settings(self, config):
            return None

    with pytest.raises(ValueError, match=r"declares \['post_settings'\], which no longer exist.*'old\+\+' or --post"):
        registry.register("old++")(OldPlusPlus)
    assert not registry.is_registered("old++")


def test_a_post_form_without_its_rows_is_refused():
    """A listed post form takes its settings from its own rows; without them its runs had an empty published row
    (not even the method's pretraining): registering such a method is a one-line error naming the form."""
    from bench.methodkit.post import PostForm

    class Unpublished(registry.get("simclr")):
        post_forms = {"pp": PostForm("SimCLR with a stage nobody published")}

    with pytest.raises(ValueError, match=r"'lonely' lists the post form\(s\) \['lonely\+\+'\] .*without their rows"):
        registry.register("lonely")(Unpublished)
    assert not registry.is_registered("lonely")
