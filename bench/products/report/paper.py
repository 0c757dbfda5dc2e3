"""The A-InfoNCE paper's Table 1 layout (Yu et al., ECCV 2022): ours, reference and Δ per cell.

``PAPER_ROWS`` is the published table's own row list and labels (RoCL and AdvCL, each with its
-IP/-HN/-IPHN variants); it defines the layout, not which methods exist. Every other registered
method (the caller's ``MethodOrder``) that has numbers of ours or of a reference for the dataset
follows under its registered name, then the leaderboard's A-InfoNCE row that names no variant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.config import SCHEMES
from bench.products.report.common import MISSING, MethodOrder, csv_text, format_epsilon, latex_escape, preset_banner
from bench.products.report.reference import UNSPECIFIED_AINFONCE, load_reference, resolve_reference_dir
from bench.products.report.render import cell_text
from bench.products.report.tables import Cell, TableKey, build_table, latest_configuration
from bench.store.atomic import write_atomic

PAPER_ATTACKS = (("clean", "SA"), ("pgd20", "RA"), ("autoattack", "AA"))
PAPER_DATASETS = (("cifar10", "CIFAR-10"), ("cifar100", "CIFAR-100"))
PAPER_ROWS = (
    ("rocl", "RoCL"),
    ("rocl-ip", "RoCL-IP"),
    ("rocl-hn", "RoCL-HN"),
    ("rocl-iphn", "RoCL-IPHN"),
    ("advcl", "AdvCL"),
    ("advcl-ip", "AdvCL-IP"),
    ("advcl-hn", "AdvCL-HN"),
    ("advcl-iphn", "AdvCL-IPHN"),
)
PAPER_EPSILON = 8 / 255
References = dict[tuple[str, str, str], list[dict[str, Any]]]  # (method, scheme, attack) -> candidates


@dataclass
class PaperSection:
    """One dataset (and preset and protocol) of the paper table: per method row, our cells and reference
    candidates."""

    dataset: str
    label: str
    preset: str | None
    rows: list[tuple[str, str]]
    ours: dict[tuple[str, str, str], Cell]
    reference: References
    protocol: str = "unified"  # the finetuning protocol of our cells (bench.evaluation.protocols)


def _paper_budget(results: pd.DataFrame) -> pd.Series:
    """Rows measured at the paper's ε (clean rows and rows without ε always qualify)."""
    at_budget = (results["epsilon"] - PAPER_EPSILON).abs() < 5e-4
    return (results["attack"] == "clean") | results["epsilon"].isna() | at_budget


def paper_sections(
    results: pd.DataFrame, reference: Sequence[dict[str, Any]], order: MethodOrder
) -> list[PaperSection]:
    """CIFAR-10 and CIFAR-100 sections: one per (preset, protocol) of ours found there (or one reference-only
    section); each takes every method's most recent configuration under that preset and protocol."""
    attacks = sorted(attack for attack, _ in PAPER_ATTACKS)
    sections = []
    for dataset, label in PAPER_DATASETS:
        ours = results[
            (results["metric"] == "accuracy")
            & (results["dataset"] == dataset)
            & (results["eval_dataset"] == dataset)
            & results["attack"].isin(attacks)
            & _paper_budget(results)
        ]
        references: References = {}
        for ref in reference:
            if (ref["dataset"], ref["eval_dataset"], ref.get("metric", "accuracy")) == (dataset, dataset, "accuracy"):
                references.setdefault((ref["method"], ref["scheme"], ref["attack"]), []).append(ref)
        groups = sorted(set(zip(ours["preset"], ours["protocol"]))) or [(None, "unified")]
        for preset, protocol in groups:
            chosen = latest_configuration(ours[(ours["preset"] == preset) & (ours["protocol"] == protocol)])
            table = build_table(
                TableKey(dataset, dataset, preset or "", PAPER_EPSILON, protocol), chosen, order, attacks
            )
            rows = _paper_rows(set(table.methods) | {method for method, _, _ in references}, order)
            sections.append(PaperSection(dataset, label, preset, rows, table.cells, references, protocol))
    return sections


def _paper_rows(present: set[str], order: MethodOrder) -> list[tuple[str, str]]:
    published = {method for method, _ in PAPER_ROWS}
    rows = list(PAPER_ROWS) + [(method, method) for method in order.names if method in present - published]
    if UNSPECIFIED_AINFONCE in present:
        rows.append((UNSPECIFIED_AINFONCE, "A-InfoNCE (unspecified variant; reference only)"))
    return rows


class Sources:
    """Numbers the reference footnotes: one per (file, method, dataset), listing its sources and notes."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}

    def mark(self, ref: dict[str, Any]) -> int:
        group = self.groups.setdefault((ref["file"], ref["method"], ref["dataset"]), [])
        if not any(ref is other for other in group):
            group.append(ref)
        return list(self.groups).index((ref["file"], ref["method"], ref["dataset"])) + 1

    def notes(self) -> list[str]:
        lines = []
        for index, ((file, method, dataset), refs) in enumerate(self.groups.items(), start=1):
            sources = " ; ".join(dict.fromkeys(ref.get("source", "") for ref in refs))
            notes = " | ".join(dict.fromkeys(ref.get("note", "") for ref in refs))
            lines.append(f"[{index}] {method}, {dataset} ({file}): {sources} — {notes}")
        return lines


def paper_cells(section: PaperSection, method: str, sources: Sources) -> dict[str, list[tuple[str, Any]]]:
    """For one method: per column, (text, number) for ours, reference and Δ = ours − reference."""
    out: dict[str, list[tuple[str, Any]]] = {"ours": [], "reference": [], "Δ": []}
    for scheme in SCHEMES:
        for attack, _ in PAPER_ATTACKS:
            cell = section.ours.get((method, scheme, attack))
            candidates = section.reference.get((method, scheme, attack), [])
            ref = candidates[0] if candidates else None
            out["ours"].append((cell_text(cell, False), None if cell is None else cell.mean))
            out["reference"].append(
                (MISSING, None) if ref is None else (f"{ref['value']:.2f} [{sources.mark(ref)}]", ref["value"])
            )
            delta = None if cell is None or ref is None else cell.mean - ref["value"]
            out["Δ"].append((MISSING if delta is None else f"{delta:+.2f}", delta))
    return out


def _flag_lines(section: PaperSection) -> list[str]:
    """Per method, the tags its rows carry besides 'suspect' (e.g. ``pseudo_labels:released-b28763e``: where
    an AdvCL-family run's pseudo-labels came from), so a pixel stand-in is never mistaken for the method."""
    found: dict[str, set[str]] = {}
    for (method, _, _), cell in section.ours.items():
        found.setdefault(method, set()).update(tag for tag in cell.flags if not tag.startswith("suspect"))
    return [f"{method}: {', '.join(sorted(found[method]))}" for method, _ in section.rows if found.get(method)]


def _alternatives(section: PaperSection, sources: Sources) -> list[str]:
    lines = []
    for (method, scheme, attack), candidates in sorted(section.reference.items()):
        if scheme in SCHEMES and len(candidates) > 1 and any(method == m for m, _ in section.rows):
            others = ", ".join(f"{ref['value']:.2f} [{sources.mark(ref)}]" for ref in candidates[1:])
            lines.append(f"{method} {scheme} {dict(PAPER_ATTACKS)[attack]}: also {others}")
    return lines


PAPER_PREAMBLE = (
    "Layout of Table 1 of Yu et al., 'Adversarial Contrastive Learning via Asymmetric InfoNCE' (ECCV 2022): "
    "SA = clean accuracy, RA = PGD-20 accuracy (ε 8/255), AA = AutoAttack (standard, L∞, ε 8/255), in %. "
    "Δ = ours − reference. The paper's own Table 1 values were not retrieved and are not shown: reference cells "
    "come from author-quoted numbers and the RobustSSL leaderboard (a third-party re-evaluation with its own "
    "checkpoints and finetuning), so protocols differ cell by cell; see the numbered sources. "
    f"{MISSING} = missing, never filled in. Ours: last-epoch accuracy ± the half-width of its 95 % interval "
    "(Wilson over the test images for one run, Student-t over seeds for several), of each method's "
    "most recently run configuration under the section's preset and protocol (docs/protocols.md)."
)
PAPER_CSV_COLUMNS = (
    "dataset",
    "preset",
    "protocol",
    "method",
    "scheme",
    "attack",
    "column",
    "ours",
    "reference",
    "delta",
    "reference_file",
    "reference_source",
)


def paper_markdown(
    sections: Sequence[PaperSection], sources: Sources, reference_dir: Path | None
) -> tuple[str, list[dict[str, Any]]]:
    """The paper table as Markdown, and the same content as long CSV rows."""
    header = ["Method", "", *(f"{scheme} {label}" for scheme in SCHEMES for _, label in PAPER_ATTACKS)]
    origin = f"Reference numbers read from `{reference_dir}`." if reference_dir else "No reference files found."
    lines = ["# Paper table: A-InfoNCE Table 1 layout, ours vs reference", "", PAPER_PREAMBLE, "", origin, ""]
    csv_rows: list[dict[str, Any]] = []
    for section in sections:
        preset = section.preset or "(no results of ours)"
        lines += [
            f"## {section.label} ({section.dataset}) · preset {preset} · protocol {section.protocol} · "
            f"ε = {format_epsilon(PAPER_EPSILON)}",
            "",
        ]
        banner = preset_banner(section.preset)
        lines += [f"> **{banner}**", ""] if banner else []
        lines += ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
        for method, label in section.rows:
            cells = paper_cells(section, method, sources)
            for kind, values in cells.items():
                lines.append("| " + " | ".join([label if kind == "ours" else "", kind, *(t for t, _ in values)]) + " |")
            csv_rows += _paper_csv_rows(section, method, cells)
        alternatives = _alternatives(section, sources)
        lines += [""] + [f"- Other published values for a cell: {line}" for line in alternatives]
        lines += [f"- Flags of ours: {line}" for line in _flag_lines(section)] + [""]
    lines += ["## Sources", ""] + [f"- {note}" for note in sources.notes()] + [""]
    return "\n".join(lines), csv_rows


def _paper_csv_rows(
    section: PaperSection, method: str, cells: dict[str, list[tuple[str, Any]]]
) -> list[dict[str, Any]]:
    columns = [(scheme, attack, label) for scheme in SCHEMES for attack, label in PAPER_ATTACKS]
    rows = []
    for index, (scheme, attack, label) in enumerate(columns):
        values = {kind: cells[kind][index][1] for kind in cells}
        ref = (section.reference.get((method, scheme, attack)) or [{}])[0]
        rows.append(
            {
                "dataset": section.dataset,
                "preset": section.preset or "",
                "protocol": section.protocol,
                "method": method,
                "scheme": scheme,
                "attack": attack,
                "column": f"{scheme} {label}",
                "reference_file": ref.get("file", ""),
                "reference_source": ref.get("source", ""),
                **{
                    key: "" if values[kind] is None else round(values[kind], 4)
                    for key, kind in (("ours", "ours"), ("reference", "reference"), ("delta", "Δ"))
                },
            }
        )
    return rows


def paper_latex(sections: Sequence[PaperSection], sources: Sources) -> str:
    """Booktabs version: per dataset a table with ours / reference / Δ sub-rows per method."""
    out = ["% requires \\usepackage{booktabs}"]
    for section in sections:
        banner = preset_banner(section.preset)
        caption = latex_escape(
            f"{section.label}, preset {section.preset or '(no results of ours)'}, "
            f"protocol {section.protocol}, ε = 8/255: ours vs reference, Δ = ours − reference"
            + (f". {banner}." if banner else "")
        )
        out += [
            "\\begin{table}[t]",
            "\\centering",
            "\\small",
            f"\\caption{{{caption}}}",
            "\\begin{tabular}{ll" + "ccc" * len(SCHEMES) + "}",
            "\\toprule",
            " & & " + " & ".join(f"\\multicolumn{{3}}{{c}}{{{scheme}}}" for scheme in SCHEMES) + " \\\\",
            " ".join(f"\\cmidrule(lr){{{3 + 3 * i}-{5 + 3 * i}}}" for i in range(len(SCHEMES))),
            "Method & & " + " & ".join(label for _ in SCHEMES for _, label in PAPER_ATTACKS) + " \\\\",
            "\\midrule",
        ]
        for method, label in section.rows:
            for kind, values in paper_cells(section, method, sources).items():
                name = latex_escape(label) if kind == "ours" else ""
                out.append(" & ".join([name, latex_escape(kind), *(latex_escape(t) for t, _ in values)]) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    out += ["% Sources:"] + [f"% {note}" for note in sources.notes()]
    return "\n".join(out) + "\n"


def write_paper_tables(
    results: pd.DataFrame, reference_dir: str | Path | None, out_dir: str | Path, order: MethodOrder = MethodOrder()
) -> list[Path]:
    """``paper_table1.{md,csv,tex}``: the A-InfoNCE Table 1 layout with ours, reference and Δ per cell."""
    directory = resolve_reference_dir(reference_dir)
    sections = paper_sections(results, load_reference(directory), order)
    sources = Sources()
    markdown, csv_rows = paper_markdown(sections, sources, directory)
    latex = paper_latex(sections, sources)
    out_dir = Path(out_dir)
    return [
        write_atomic(out_dir / "paper_table1.md", markdown),
        write_atomic(out_dir / "paper_table1.csv", csv_text(csv_rows, PAPER_CSV_COLUMNS)),
        write_atomic(out_dir / "paper_table1.tex", latex),
    ]
