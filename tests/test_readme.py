"""The README works as printed: the "Adding a method" example runs, and the layout names every module."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tiny_run import TINY

from bench.cli.app import main
from bench.methodkit import registry

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.e2e
def test_readme_method_example_registers_and_runs(tmp_path, capsys):
    text = README.read_text()
    block = re.search(r"```python\n# methods/my_method.py\n(.*?)```", text, re.S).group(1)
    try:
        exec(compile(block, "README.md", "exec"), {})
        assert main(["list"]) == 0
        listed = capsys.readouterr().out
        for name in ("my-method", "my-method-ip", "my-method-hn", "my-method-iphn"):
            registry.derive_variants()
            assert name in registry.available()
        assert "my-method" in listed
        directories = ["--results-dir", str(tmp_path / "r"), "--reports-dir", str(tmp_path / "rep")]
        code = main(
            ["run", "--methods", "my-method", "my-method-ip", *directories, *TINY, "--set", "finetune.batch_size=512"]
        )
        assert code == 0
        table = (tmp_path / "r" / "results.csv").read_text()
        assert "my-method-ip" in table
    finally:
        for name in ("my-method", "my-method-ip", "my-method-hn", "my-method-iphn"):
            registry.unregister(name)


def test_readme_layout_names_every_module():
    """README's layout lists every module of ``bench/`` (its table names each by file or module name,
    ``report/``'s modules by the package)."""
    layout = README.read_text().split("## Layout", 1)[1]
    package = README.parent / "bench"
    modules = [path for path in package.rglob("*.py") if path.name != "__init__.py" and path.parent.name != "report"]
    missing = sorted(
        str(path.relative_to(package))
        for path in modules
        if not any(f"`{name}`" in layout for name in (path.stem, path.name, f"bench/{path.relative_to(package)}"))
    )
    assert not missing, f"README's layout does not name {missing}"
