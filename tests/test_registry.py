"""Registry: built-ins, variants, a dummy method from a test and one through an entry point."""

from __future__ import annotations

import json
import textwrap

import pytest
from fake_plugin import install_plugin

from bench.cli.app import main
from bench.config import ConfigError
from bench.engine.losses import nt_xent
from bench.methodkit import registry
from bench.methodkit.method import Method
from bench.methodkit.registry import register

TINY = [
    "--epochs",
    "1",
    "--finetune-epochs",
    "1",
    "--n-eval",
    "24",
    "--attacks",
    "clean,pgd20",
    "--set",
    "pretrain.batch_size=64",
    "--set",
    "finetune.batch_size=256",
    "--quiet",
    "--device",
    "cpu",
]


def test_builtin_methods_and_variants_are_registered():
    names = set(registry.available())
    bases = {"simclr", "acl", "rocl", "advcl"}
    assert bases <= names
    for base in ("acl", "rocl", "advcl"):
        for suffix in ("ip", "hn", "iphn"):
            variant = registry.get(f"{base}-{suffix}")
            assert variant.variant.base == base
            assert variant.variant.inferior_positives == ("ip" in suffix)
            assert variant.variant.hard_negatives == suffix.endswith("hn")
    assert "simclr-ip" not in names  # no adversarial views, no variants


def test_unknown_method_lists_the_registered_ones():
    with pytest.raises(ConfigError, match="not registered: allowed .*'acl'"):
        registry.get("nope")
    assert registry.is_registered("advcl-iphn") and not registry.is_registered("nope")


def test_resolve_expands_wildcards_and_all():
    order = list(registry.available())  # registration order (depends on which test imported a method first)
    assert registry.resolve(["advcl*"]) == ["advcl", "advcl-ip", "advcl-hn", "advcl-iphn"]
    hard = registry.resolve(["[ar]*cl-hn", "rocl", "rocl-hn"])  # a wildcard's matches in registration order, each once
    assert hard == sorted(["acl-hn", "advcl-hn", "rocl-hn"], key=order.index) + ["rocl"]
    assert registry.resolve(["acl-i?", "simclr"]) == ["acl-ip", "simclr"]
    assert registry.resolve(["all"]) == [name for name in order if registry.get(name).selected_by_all]
    with pytest.raises(ConfigError, match=r"methods='nope\*' matches no registered method: allowed \[.*'simclr'.*\]"):
        registry.resolve(["nope*"])


# The A-InfoNCE paper's table (Yu et al. 2022): what `--methods all` runs in the smoke benchmark.
A_INFONCE_TABLE = (
    "simclr",
    "acl",
    "acl-ip",
    "acl-hn",
    "acl-iphn",
    "advcl",
    "advcl-ip",
    "advcl-hn",
    "advcl-iphn",
    "rocl",
    "rocl-ip",
    "rocl-hn",
    "rocl-iphn",
)


def test_all_is_the_a_infonce_table_and_the_newer_methods_are_selected_by_name_or_pattern(capsys):
    builtin = {name for name, cls in registry.available().items() if cls.__module__.startswith("methods.")}
    assert {name for name in registry.resolve(["all"]) if name in builtin} == set(A_INFONCE_TABLE)
    assert set(registry.resolve(["dynacl*"])) == {
        f"{base}{suffix}"
        for base in ("dynacl", "dynacl++", "dynacl-air", "dynacl-air++")
        for suffix in ("", "-ip", "-hn", "-iphn")
    }
    assert registry.resolve(["acl-air*", "deacl"]) == ["acl-air", "acl-air-ip", "acl-air-hn", "acl-air-iphn", "deacl"]
    assert main(["list"]) == 0
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "° " not in listed["acl-iphn"] and "° DynACL++" in listed["dynacl++"] and "° " in listed["deacl"]
    assert "--methods 'dynacl*'" in listed["°"]
    assert "'<name>++'" in listed["Every"] and "--post pp" in listed["Every"]
    assert main(["list", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {row["name"] for row in rows if row["in_all"]} >= set(A_INFONCE_TABLE)
    assert not any(row["in_all"] for row in rows if row["name"].startswith(("dynacl", "acl-air", "deacl")))


@pytest.fixture
def dummy_method():
    @register("dummy-test")
    class Dummy(Method):
        description = "a throw-away method registered by a test"

        def training_step(self, model, images, ctx):
            z1, z2 = model(images).chunk(2)
            return nt_xent(z1, z2), {}

    yield Dummy
    registry.unregister("dummy-test")


@pytest.mark.e2e
def test_dummy_method_is_listed_and_runs(dummy_method, tmp_path, capsys):
    assert main(["list"]) == 0
    assert "dummy-test" in capsys.readouterr().out
    code = main(
        [
            "run",
            "--methods",
            "dummy-test",
            "--results-dir",
            str(tmp_path / "r"),
            "--reports-dir",
            str(tmp_path / "rep"),
            "--schemes",
            "SLF",
            "--no-report",
            *TINY,
        ]
    )
    assert code == 0
    table = (tmp_path / "r" / "results.csv").read_text()
    assert "dummy-test" in table and "pgd20" in table


@pytest.mark.e2e
def test_entry_point_plugin_is_discovered(tmp_path, monkeypatch, capsys):
    source = textwrap.dedent("""
        from bench.engine.losses import nt_xent
        from bench.methodkit.method import Method
        from bench.methodkit.registry import register

        @register("plugin-demo")
        class PluginDemo(Method):
            description = "a method shipped by a third-party package"

            def training_step(self, model, images, ctx):
                z1, z2 = model(images).chunk(2)
                return nt_xent(z1, z2), {}
    """)
    install_plugin(tmp_path, "acl_bench_plugin_demo", source, "demo", monkeypatch)
    try:
        assert main(["list"]) == 0
        assert "plugin-demo" in capsys.readouterr().out
        code = main(
            [
                "run",
                "--methods",
                "plugin-demo",
                "--results-dir",
                str(tmp_path / "r"),
                "--reports-dir",
                str(tmp_path / "rep"),
                "--schemes",
                "SLF",
                "--no-report",
                *TINY,
            ]
        )
        assert code == 0
        assert "plugin-demo" in (tmp_path / "r" / "results.csv").read_text()
    finally:
        registry.unregister("plugin-demo")
