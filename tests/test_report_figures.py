"""Figures at the size of a real table: 13 methods × 3 seeds, loss histories and wall times.

The figures are checked as drawn (matplotlib objects captured on save), not by pixels: one loss
line per method with its seed band, legends outside the axes, no text labels on the trade-off
points, PGD-20 and AA of a method joined, ε ticks at k/255, seed dots and no error bar for one seed.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from report_stores import GOLDEN_ORDER, row, write_full_store, write_store

from bench.products.report import compute, curves, figures, write_reports

FAMILIES = {"simclr": 1, "acl": 4, "rocl": 4, "advcl": 4}


def _render(root: Path, spec: dict, monkeypatch) -> dict:
    """Write the reports, keeping every figure by file name; any matplotlib warning fails."""
    drawn = {}
    save = figures.save_figure

    def keep(figure, stem):
        drawn[Path(stem).name.split("_")[0]] = figure
        return save(figure, stem)

    for module in (figures, curves, compute):
        monkeypatch.setattr(module, "save_figure", keep)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "constrained_layout not applied because axes sizes collapsed"
        written = write_reports(
            spec["results_csv"], root / "reports", spec["runs_dir"], spec["reference_dir"], method_order=GOLDEN_ORDER
        )
    return {"figures": drawn, "written": written, "reports": root / "reports"}


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    results_csv = write_full_store(root)
    spec = {"results_csv": results_csv, "runs_dir": root / "results" / "runs", "reference_dir": None}
    with pytest.MonkeyPatch.context() as monkeypatch:
        return _render(root, spec, monkeypatch)


def _visible_axes(figure) -> list:
    return [axis for axis in figure.axes if axis.get_visible()]


def _legend_clear_of_axes(figure, legend) -> None:
    """The legend overlaps no axes, and no axes collapsed (each keeps a fair share of the figure)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(figure.canvas, FigureCanvasAgg):
        FigureCanvasAgg(figure).draw()  # lays the figure out again, as savefig did
    renderer = figure.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    for axis in _visible_axes(figure):
        area = axis.get_window_extent(renderer)
        assert area.width > 0.15 * figure.bbox.width / 3 and area.height > 0.15 * figure.bbox.height
        assert box.x0 >= area.x1 - 1 or box.x1 <= area.x0 + 1 or box.y1 <= area.y0 + 1 or box.y0 >= area.y1 - 1


@pytest.mark.e2e
def test_every_figure_kind_is_written_at_full_size(full):
    names = {Path(path).name for path in full["written"]}
    for kind in ("tradeoff", "bars", "compute", "loss", "epsilon"):
        assert any(name.startswith(kind) and name.endswith(".png") for name in names), kind
        assert any(name.startswith(kind) and name.endswith(".pdf") for name in names), kind


def test_loss_one_line_per_method_with_seed_band_per_family_panel(full):
    figure = full["figures"]["loss"]
    axes = _visible_axes(figure)
    assert [axis.get_title() for axis in axes] == list(FAMILIES)  # one panel per family, method order
    for axis, (family, count) in zip(axes, FAMILIES.items()):
        lines = axis.get_lines()
        assert len(lines) == count and len(axis.collections) == count  # mean line + min–max band per method
        assert [text.get_text() for text in axis.get_legend().get_texts()][0] == family
        colours = {line.get_color() for line in lines}
        assert len(colours) == 1  # family colour; variants by line style
        assert len({line.get_linestyle() for line in lines}) == count
        band = axis.collections[0].get_paths()[0].vertices[:, 1]
        assert band.max() > band.min()  # the band spans the seeds
        _legend_clear_of_axes(figure, axis.get_legend())
    assert "shaded min–max of 3" in figure._suptitle.get_text()


@pytest.mark.e2e
def test_tradeoff_has_a_legend_not_labels_and_joins_pgd_and_aa(full):
    figure = full["figures"]["tradeoff"]
    (legend,) = figure.legends
    labels = [text.get_text() for text in legend.get_texts()]
    assert labels == [*GOLDEN_ORDER, "PGD-20", "AA"]
    _legend_clear_of_axes(figure, legend)
    top = [axis for axis in figure.axes if axis.get_title() in ("SLF", "ALF", "AFF")]
    assert len(top) == 3
    for axis in figure.axes:
        assert not axis.texts  # no annotations that would overlap
    for axis in top:
        joins = [line for line in axis.get_lines() if len(line.get_xdata()) == 2]
        assert len(joins) == 13 and all(line.get_xdata()[0] == line.get_xdata()[1] for line in joins)
        markers = [line for line in axis.get_lines() if len(line.get_xdata()) == 1]
        assert sorted(line.get_fillstyle() for line in markers) == ["full"] * 13 + ["none"] * 13
    zoomed = [axis for axis in figure.axes if "without non-adversarial anchors" in axis.get_title()]
    assert len(zoomed) == 3 and all(len(axis.get_lines()) == 12 * 3 for axis in zoomed)  # simclr left out


def test_epsilon_axis_in_255ths_and_outside_legend(full):
    figure = full["figures"]["epsilon"]
    for axis in figure.axes:
        assert [label.get_text() for label in axis.get_xticklabels()] == ["2/255", "4/255", "8/255", "12/255", "16/255"]
    (legend,) = figure.legends
    assert len(legend.get_texts()) == 13
    _legend_clear_of_axes(figure, legend)


def test_bars_show_each_seed(full):
    figure = full["figures"]["bars"]
    for axis in figure.axes:
        dots = [line for line in axis.get_lines() if line.get_marker() == "o"]
        assert len(dots) == 13 * 3 and all(len(line.get_xdata()) == 3 for line in dots)
    assert "dots: seeds" in figure._suptitle.get_text()


def test_compute_figure_in_gpu_hours_from_done_and_wall_time(full):
    figure = full["figures"]["compute"]
    assert [axis.get_xlabel() for axis in figure.axes] == ["GPU-hours"] * 3
    axis = figure.axes[0]  # SLF
    means = [line for line in axis.get_lines() if len(line.get_xdata()) == 1]
    assert len(means) == 13
    # simclr (index 0): pretraining 36000 s + 60 s × seed (mean 36060 s) plus SLF's 3600 s wall time
    assert means[0].get_xdata()[0] == pytest.approx((36060 + 3600) / 3600)
    assert axis.get_ylabel() == "AA accuracy (%)"


@pytest.mark.e2e
def test_one_seed_gets_no_error_bar_and_reused_encoders_are_charged_the_donor(tmp_path, monkeypatch):
    rows = [
        row(run_id, method, "SLF", attack, value, seed=seed)
        for run_id, method, seed in (("acl-s0", "acl", 0), ("acl-s1", "acl", 1), ("rocl-s0", "rocl", 0))
        for attack, value in (("clean", 80.0 + seed), ("pgd20", 40.0 - seed))
    ]
    spec = {
        "results_csv": write_store(tmp_path, rows),
        "runs_dir": tmp_path / "results" / "runs",
        "reference_dir": None,
    }
    runs = spec["runs_dir"]
    (runs / "acl-s0" / "done.json").write_text(json.dumps({"pretrain_wall_s": 7200.0, "encoder_from": "acl-s0"}))
    (runs / "acl-s1").mkdir()
    (runs / "acl-s1" / "done.json").write_text(json.dumps({"pretrain_wall_s": 0.0, "encoder_from": "acl-s0"}))
    drawn = _render(tmp_path, spec, monkeypatch)["figures"]
    bars = drawn["bars"]  # acl: 2 seeds; rocl: 1
    segments = [
        segment
        for axis in bars.axes
        for collection in axis.collections
        for segment in collection.get_segments()
        if len(segment) and all(map(all, segment == segment))
    ]
    assert len(segments) == 2  # acl SLF clean and PGD-20 only
    compute_figure = drawn["compute"]
    (axis,) = compute_figure.axes
    means = [line for line in axis.get_lines() if len(line.get_xdata()) == 1]
    assert len(means) == 1  # acl only (rocl has no done.json); both seeds charged 2 h + 1.5 s
    assert means[0].get_xdata()[0] == pytest.approx((7200 + 1.5) / 3600, rel=1e-6)
    assert axis.get_xlabel() == "wall-clock hours on cpu" and axis.get_ylabel() == "PGD-20 accuracy (%)"
