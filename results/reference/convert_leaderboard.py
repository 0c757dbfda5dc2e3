"""Convert the wide RobustSSL leaderboard copy into this directory's long reference format.

Usage (from a checkout): ``python results/reference/convert_leaderboard.py SRC DST``, e.g.
``SRC`` = the wide copy (pretrain, downstream, mode, paper, venue, comment, ra/ca/sa × vanilla/autolora,
from https://robustssl.github.io/, repository RobustSSL/RobustSSL.github.io, ``leaderboard/*.js``) and
``DST`` = ``results/reference/robustssl_leaderboard.csv``. ``README.md`` here documents the mapping.

The leaderboard names papers, not methods: ``LEADERBOARD_PAPERS`` maps each paper to our registry
name (or a descriptive one for methods acl-bench does not implement). A 0 means "not reported" and is
dropped. An unknown paper stops the conversion rather than guessing.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout: the repository's bench/

from bench.store.atomic import write_atomic  # noqa: E402

UNSPECIFIED_AINFONCE = "a-infonce (unspecified variant)"  # = bench.products.report.reference.UNSPECIFIED_AINFONCE
LEADERBOARD_PAPERS = {  # paper title prefix -> (method, method when the row uses post-processing, note)
    "Robust Pre-Training by Adversarial Contrastive Learning": ("acl", None, "ACL (Jiang et al., NeurIPS 2020)"),
    "Adversarial Self-Supervised Contrastive Learning": ("rocl", None, "RoCL (Kim et al., NeurIPS 2020)"),
    "When Does Contrastive Learning Preserve": ("advcl", None, "AdvCL (Fan et al., NeurIPS 2021)"),
    "Adversarial Contrastive Learning via Asymmetric InfoNCE": (
        UNSPECIFIED_AINFONCE,
        None,
        (
            "A-InfoNCE (Yu et al., ECCV 2022); the leaderboard does not say which variant "
            "(IP/HN/IPHN, AdvCL or RoCL base), so it is not assigned to one"
        ),
    ),
    "Rethinking the Effect of Data Augmentation": ("dynacl", "dynacl++", "DynACL (Luo et al., ICLR 2023)"),
    "Enhancing Adversarial Contrastive Learning via Adversarial Invariant": (
        "dynacl-air",
        "dynacl-air++",
        (
            "AIR (Xu et al., NeurIPS 2023); base DynACL per science/baselines-notes.md, "
            "the leaderboard names only the paper"
        ),
    ),
    "Efficient Adversarial Contrastive Learning via Robustness-Aware": (
        "dynacl-rcs",
        None,
        (
            "RCS (Xu et al., NeurIPS 2023); base DynACL per science/baselines-notes.md, "
            "the leaderboard names only the paper; coreset fraction not stated"
        ),
    ),
    "Decoupled Adversarial Contrastive Learning": ("deacl", None, "DeACL (Zhang et al., ECCV 2022)"),
    "Effective Targeted Attacks for Adversarial Self-Supervised": ("taro", None, "TARO (NeurIPS 2023)"),
}
LEADERBOARD_MEASURES = (
    ("sa", "clean", "standard accuracy"),
    ("ra", "autoattack", "AutoAttack standard, L-inf, eps 8/255"),
    ("ca", "common-corruptions", "accuracy under common corruptions"),
)
LEADERBOARD_PLACEHOLDERS = (37.92, 72.65, 80.65)  # AutoLoRa values repeated across unrelated rows of the source
REFERENCE_COLUMNS = ("method", "dataset", "eval_dataset", "scheme", "attack", "metric", "value", "source", "note")


def leaderboard_method(paper: str, comment: str) -> tuple[str, str]:
    """Our method name and a note for one leaderboard row (raises on an unknown paper)."""
    for prefix, (method, post_processed, note) in LEADERBOARD_PAPERS.items():
        if paper.strip().startswith(prefix):
            if "post-processing" in comment.lower():
                return post_processed or method, note + "; with post-processing"
            return method, note
    raise ValueError(f"leaderboard paper {paper!r} has no method mapping: add it to LEADERBOARD_PAPERS")


def leaderboard_to_reference(rows: Iterable[dict[str, str]]) -> list[dict[str, Any]]:
    """Wide rows (ra/ca/sa × vanilla/autolora) to the long reference format; 0 = not reported, dropped."""
    out = []
    for row in rows:
        method, note = leaderboard_method(row["paper"], row.get("comment", ""))
        source = (
            f"https://robustssl.github.io/ (github.com/RobustSSL/RobustSSL.github.io, "
            f"leaderboard/{row['pretrain']}-{row['downstream']}-{row['mode']}.js)"
        )
        comment = row.get("comment", "").strip()
        for finetune, suffix in (("vanilla", ""), ("autolora", "-autolora")):
            for prefix, attack, measure in LEADERBOARD_MEASURES:
                value = float(row[f"{prefix}_{finetune}"])
                if value == 0:
                    continue
                extra = [f"{finetune} finetuning", measure, f"leaderboard comment: {comment}" if comment else ""]
                if finetune == "autolora" and value in LEADERBOARD_PLACEHOLDERS:
                    extra.append(
                        "value repeats across unrelated rows of the source (37.92/72.65/80.65): treat with care"
                    )
                out.append(
                    {
                        "method": method,
                        "dataset": row["pretrain"],
                        "eval_dataset": row["downstream"],
                        "scheme": row["mode"] + suffix,
                        "attack": attack,
                        "metric": "accuracy",
                        "value": value,
                        "source": source,
                        "note": "; ".join(part for part in [note, *extra] if part),
                    }
                )
    return out


def convert(source: str | Path, destination: str | Path) -> Path:
    """Write ``destination`` (long reference format, atomically) from the wide leaderboard ``source``."""
    with open(source, newline="") as stream:
        rows = leaderboard_to_reference(csv.DictReader(stream))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(REFERENCE_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_atomic(Path(destination), buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="the wide leaderboard CSV")
    parser.add_argument("destination", help="the long reference CSV to write (e.g. robustssl_leaderboard.csv)")
    args = parser.parse_args(argv)
    try:
        path = convert(args.source, args.destination)
    except KeyError as error:
        print(
            f"convert_leaderboard: {args.source} lacks the column {error}: not the wide leaderboard format",
            file=sys.stderr,
        )
        return 2
    except (OSError, ValueError) as error:
        print(f"convert_leaderboard: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
