"""What ``pip install`` of a method plugin leaves on sys.path: its module and an ``acl_bench.methods``
entry point, so the registry discovers it as it would a real package. Shared by the plugin tests."""

from __future__ import annotations

from pathlib import Path

from bench.methodkit import registry


def install_plugin(site: Path, module: str, source: str, entry: str, monkeypatch) -> None:
    """Write ``module``.py with ``source`` into ``site`` beside a dist-info naming it as entry point ``entry``,
    put ``site`` first on sys.path and let the registry discover again."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(source)
    dist = site / f"{module}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[acl_bench.methods]\n{entry} = {module}\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_discovered", False)
