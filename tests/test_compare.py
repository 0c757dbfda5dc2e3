"""``bench compare``: paired per-image comparison of two runs from their stored records.

The records are written by the tests (no training); the expected p-value and power are computed
here from the binomial distribution with ``math.comb``, never with bench.products.stats.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bench.cli.app import main
from bench.config import smoke_preset
from bench.evaluation.evaluate import seeded_subset
from bench.evaluation.scheme_run import evaluate_ready_classifier
from bench.products.compare import CompareError, compare_runs, find_run
from bench.store.records import read_record, write_record
from bench.store.results import ResultsStore, RunDir

# 200 images: both correct 100, only the variant 30, only the base 10, neither 60
BOTH, VARIANT_ONLY, BASE_ONLY, NEITHER = 100, 30, 10, 60
N = BOTH + VARIANT_ONLY + BASE_ONLY + NEITHER


def _tables() -> tuple[np.ndarray, np.ndarray]:
    base = np.array([True] * BOTH + [False] * VARIANT_ONLY + [True] * BASE_ONLY + [False] * NEITHER)
    variant = np.array([True] * BOTH + [True] * VARIANT_ONLY + [False] * BASE_ONLY + [False] * NEITHER)
    order = np.random.default_rng(0).permutation(N)  # the images in any order: pairing is by index
    return base[order], variant[order]


def _store(tmp_path, variant_meta=None, base_meta=None):
    store = ResultsStore(tmp_path / "r")
    base, variant = _tables()
    indices = np.arange(1000, 1000 + N)
    meta = {"epsilon": 0.1, "eval_dataset": "digits", "subset_seed": 0, **(base_meta or {})}
    write_record(store.run("acl-s0").create().correct("SLF"), indices, {"clean": base, "pgd20": base}, meta)
    write_record(
        store.run("acl-ip-s0").create().correct("SLF"),
        indices,
        {"clean": variant, "pgd20": base},
        {**meta, **(variant_meta or {})},
    )
    return store


def _exact_mcnemar(b: int, c: int) -> float:
    k, m = min(b, c), b + c
    return min(1.0, 2 * sum(math.comb(m, i) for i in range(k + 1)) / 2**m)


def test_paired_counts_give_the_textbook_mcnemar_test(tmp_path):
    store = _store(tmp_path)
    results = compare_runs(store.run("acl-s0"), store.run("acl-ip-s0"))
    assert [(r.scheme, r.attack) for r in results] == [("SLF", "clean"), ("SLF", "pgd20")]
    clean, pgd = results
    c = clean.comparison
    assert c.n == N and abs(c.base - 55.0) < 1e-9 and abs(c.variant - 65.0) < 1e-9 and abs(c.difference - 10.0) < 1e-9
    assert abs(c.p_value - _exact_mcnemar(VARIANT_ONLY, BASE_ONLY)) < 1e-12 and c.verdict == "variant better"
    assert c.low < 10.0 < c.high
    assert clean.discordant == (VARIANT_ONLY + BASE_ONLY) / N
    # identical correctness: no discordant image, no test can tell them apart
    assert pgd.comparison.p_value == 1.0 and pgd.comparison.verdict == "no detectable difference"
    assert pgd.detectable is None


def _power(n: int, difference: float, discordant: float, alpha: float = 0.05) -> float:
    """Exact power of the exact two-sided McNemar test, by enumeration (independent of bench.products.stats)."""
    share = (discordant + difference) / (2 * discordant)
    total = 0.0
    for m in range(n + 1):
        p_m = math.comb(n, m) * discordant**m * (1 - discordant) ** (n - m)
        if p_m < 1e-15:
            continue
        reject = sum(
            math.comb(m, k) * share**k * (1 - share) ** (m - k)
            for k in range(m + 1)
            if _exact_mcnemar(k, m - k) < alpha + 1e-12
        )
        total += p_m * reject
    return total


def test_minimum_detectable_difference_has_the_stated_power(tmp_path):
    store = _store(tmp_path)
    clean = compare_runs(store.run("acl-s0"), store.run("acl-ip-s0"), attacks=["clean"])[0]
    detectable, discordant = clean.detectable / 100, clean.discordant
    assert 0 < detectable <= discordant
    assert _power(N, detectable, discordant) >= 0.8 - 1e-6
    assert _power(N, detectable - 0.005, discordant) < 0.8


def test_cli_prints_the_table(tmp_path, capsys):
    _store(tmp_path)
    code = main(["compare", "acl-s0", "acl-ip-s0", "--attack", "clean", "--results-dir", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert code == 0, out
    line = next(line for line in out.splitlines() if line.startswith("| SLF | clean |"))
    assert "| 200 | 55.0 | 65.0 | +10.0 [" in line and "| classifiers differ |" in line
    assert "pgd20" not in out and "exact McNemar" in out and "variant better" not in out
    assert out.startswith("# Classifier level (one run each): do the trained classifiers acl-ip-s0 and acl-s0 differ?")


def _fails_with_one_line(args, capsys, expected):
    code = main(["compare", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and expected in err, err


def test_bad_requests_fail_with_one_line(tmp_path, capsys):
    store = _store(tmp_path)
    root = ["--results-dir", str(store.root)]
    _fails_with_one_line(["acl-s0", "nope", *root], capsys, "'nope' is invalid: allowed a run id in")
    _fails_with_one_line(
        ["acl-s0", "acl-ip-s0", "--scheme", "ALF", *root], capsys, "scheme='ALF' is invalid: allowed ['SLF']"
    )
    _fails_with_one_line(
        ["acl-s0", "acl-ip-s0", "--attack", "autoattack", *root],
        capsys,
        "attack='autoattack' is invalid: allowed ['clean', 'pgd20']",
    )
    store.run("old").create()
    _fails_with_one_line(["acl-s0", "old", *root], capsys, "run 'old' has no per-image records")
    store.run("acl-s0").correct("SLF").write_bytes(b"not a record")
    _fails_with_one_line(["acl-s0", "acl-ip-s0", *root], capsys, "is not a readable .npz")


def test_runs_evaluated_differently_are_refused(tmp_path):
    store = _store(tmp_path, variant_meta={"epsilon": 0.05})
    with pytest.raises(CompareError, match=r"epsilon differs for SLF: base 0.1, variant 0.05"):
        compare_runs(store.run("acl-s0"), store.run("acl-ip-s0"))


@pytest.mark.parametrize(
    "differing, base, variant", [("step_size", 0.015, 0.0001), ("pgd_steps", 20, 5), ("image_size", 16, 24)]
)
def test_runs_attacked_or_sized_differently_are_refused(tmp_path, differing, base, variant):
    """Review 2, D9: runs evaluated with PGD step 1e-4 and 0.015 (or at image size 16 and 24) were paired,
    and the weaker attack showed as +18.8 points. Each setting of the attack and the resolution must match."""
    meta = {"step_size": 0.015, "pgd_steps": 20, "image_size": 16}
    store = _store(tmp_path, base_meta={**meta, differing: base}, variant_meta={**meta, differing: variant})
    with pytest.raises(CompareError, match=rf"^{differing} differs for SLF: base {base}, variant {variant}; [^\n]*$"):
        compare_runs(store.run("acl-s0"), store.run("acl-ip-s0"))


def test_a_run_is_found_by_id_or_directory(tmp_path):
    store = _store(tmp_path)
    assert find_run("acl-s0", store.root).path == store.run("acl-s0").path
    assert find_run(str(store.run("acl-s0").path), tmp_path / "elsewhere").path == store.run("acl-s0").path


def test_every_evaluation_stores_its_per_image_record(tmp_path, digits):
    """The protocol writes ``correct_<scheme>.npz``: the evaluated indices and each attack's correctness."""
    config = smoke_preset()
    config.evaluate.n_eval, config.evaluate.attacks = 40, ("clean", "pgd20")
    config.evaluate.corruptions = "none"
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, digits.num_classes))
    run_dir = RunDir(tmp_path / "run")
    rows = evaluate_ready_classifier(classifier, digits, config, torch.device("cpu"), run_dir)
    record = read_record(run_dir.correct("AT"))
    expected_indices = seeded_subset(digits.x_test.shape[0], 40, config.evaluate.subset_seed)
    assert np.array_equal(record.indices, expected_indices.numpy())
    with torch.no_grad():
        x = digits.x_test[expected_indices].float() / 255
        predictions = classifier(x).argmax(1)
    assert np.array_equal(record.correct["clean"], (predictions == digits.y_test[expected_indices]).numpy())
    assert set(record.correct) == {"clean", "pgd20"} and record.meta["epsilon"] == config.evaluate.epsilon
    assert (
        record.meta["step_size"] == config.evaluate.step_size and record.meta["pgd_steps"] == config.evaluate.pgd_steps
    )
    assert record.meta["image_size"] == digits.x_test.shape[-1]
    clean_row = next(row for row in rows if row.attack == "clean")
    assert clean_row.value == 100.0 * record.correct["clean"].mean()


def _method_store(tmp_path, seeds=(0, 1, 2)):
    """acl and acl-ip, one run per seed, rows in results.csv and per-image records of SLF pgd20 (300 images)."""
    from report_stores import row, write_csv

    store, generator, rows, arrays = ResultsStore(tmp_path / "r"), np.random.default_rng(1), [], {}
    for method, accuracy in (("acl", 0.40), ("acl-ip", 0.46)):
        for seed in seeds:
            correct = generator.random(300) < accuracy + 0.03 * seed
            run_id = f"{method}-s{seed}"
            arrays[method, seed] = correct
            write_record(
                store.run(run_id).create().correct("SLF"), np.arange(300), {"pgd20": correct}, {"epsilon": 0.1}
            )
            rows.append(row(run_id, method, "SLF", "pgd20", 100 * correct.mean(), seed=seed))
    write_csv(store.table, rows)
    return store, arrays


def test_method_names_are_compared_over_their_seeds(tmp_path, capsys):
    from bench.products.method_level import compare_methods

    store, arrays = _method_store(tmp_path)
    assert main(["compare", "acl", "acl-ip", "--results-dir", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Method level (3 seeds): does the method acl-ip differ from acl? (seeds 0, 1, 2")
    expected = compare_methods([arrays["acl", s] for s in range(3)], [arrays["acl-ip", s] for s in range(3)])
    line = next(line for line in out.splitlines() if line.startswith("| SLF | pgd20 |"))
    interval = f"{expected.difference:+.1f} [{expected.low:+.1f}, {expected.high:+.1f}]"
    assert "| 3 | 300 | " in line and interval in line and f"| {expected.p_value:.3g} | {expected.verdict} |" in line
    assert f"| {expected.seeds_needed()} |" in line and "Runs (seed: base, variant): 0: acl-s0, acl-ip-s0" in out


def test_one_seed_of_each_method_gives_no_method_verdict(tmp_path, capsys):
    store, _ = _method_store(tmp_path, seeds=(0,))
    assert main(["compare", "acl", "acl-ip", "--results-dir", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Method level (1 seeds)") and "| needs seeds |" in out
    assert "needs ≥ 2 seeds to estimate" in out and "variant better" not in out


def test_bad_method_requests_fail_with_one_line(tmp_path, capsys):
    store, _ = _method_store(tmp_path)
    root = ["--results-dir", str(store.root)]
    _fails_with_one_line(["acl", "rocl", *root], capsys, "or a method with seeded results in")
    _fails_with_one_line(["acl", "rocl", *root], capsys, "['acl', 'acl-ip']")
    _fails_with_one_line(["acl", "acl-ip-s0", *root], capsys, "allowed two run ids (classifier level) or two method")
    _fails_with_one_line(["acl", "acl-ip", "--attack", "clean", *root], capsys, "attack='clean' is invalid")
