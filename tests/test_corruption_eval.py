"""Common-corruption evaluation through the protocol (issue 13 §2): rows, records, sources, settings.

Data is made here: the embedded digits for the regenerated corruptions, fake CIFAR-10-C files for
the official ones (never downloaded).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bench.config import ConfigError, preset, set_field, smoke_preset, validate
from bench.engine.corruptions import regenerate
from bench.engine.data import ImageData, to_float
from bench.evaluation.corruption_eval import corrupted_images, corruption_source
from bench.evaluation.evaluate import seeded_subset
from bench.evaluation.scheme_run import evaluate_ready_classifier
from bench.store.records import read_record
from bench.store.results import RunDir


def _classifier(digits) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, digits.num_classes))


def _config(**fields):
    config = smoke_preset()
    config.evaluate.n_eval, config.evaluate.attacks, config.evaluate.sanity = 40, ("clean",), False
    for name, value in fields.items():
        set_field(config, f"evaluate.{name}", value)
    return validate(config)


def test_regenerated_corruptions_give_rows_per_pair_and_severity_means(tmp_path, digits):
    config = _config(
        corruptions="regenerated",
        corruption_names="gaussian_noise,motion_blur",
        corruption_severities="1,5",
        corruption_seed="3",
    )
    classifier = _classifier(digits)
    run_dir = RunDir(tmp_path / "run")
    rows = {
        row.attack: row for row in evaluate_ready_classifier(classifier, digits, config, torch.device("cpu"), run_dir)
    }
    indices = seeded_subset(digits.x_test.shape[0], 40, config.evaluate.subset_seed)
    labels = digits.y_test[indices]
    expected = {}
    for name in ("gaussian_noise", "motion_blur"):
        for severity in (1, 5):
            images = regenerate(digits.x_test[indices], name, severity, seed=3)
            with torch.no_grad():
                expected[name, severity] = 100.0 * int((classifier(to_float(images)).argmax(1) == labels).sum()) / 40
            row = rows[f"corruption:{name}:{severity}"]
            assert row.value == expected[name, severity] and row.n_eval == 40 and "regenerated" in row.flags
    assert "approximate" in rows["corruption:motion_blur:1"].flags  # ImageMagick's blur, re-implemented
    assert "approximate" not in rows["corruption:gaussian_noise:1"].flags
    for severity in (1, 5):
        mean = (expected["gaussian_noise", severity] + expected["motion_blur", severity]) / 2
        assert abs(rows[f"corruption-mean:{severity}"].value - mean) < 1e-9
    assert abs(rows["corruption-mean"].value - sum(expected.values()) / 4) < 1e-9
    assert "approximate" in rows["corruption-mean"].flags
    exact = (expected["gaussian_noise", 1] + expected["gaussian_noise", 5]) / 2  # without the approximate blur
    assert abs(rows["corruption-mean-exact"].value - exact) < 1e-9
    record = read_record(run_dir.correct("AT"))
    assert 100.0 * record.correct["corruption:gaussian_noise:5"].mean() == expected["gaussian_noise", 5]


def test_auto_corruptions_are_off_outside_the_c_datasets_and_digits(tmp_path, digits):
    """'auto' evaluates the official files on the -C datasets, a regeneration on the embedded digits (so
    the default smoke report has a corruption table, for its SLF classifier) and nothing elsewhere."""
    assert preset("smoke").evaluate.corruption_schemes == ("SLF",)
    config = _config()
    assert corruption_source(config) == "regenerated"
    config.data.name = "cifar10"
    assert corruption_source(config) == "none"
    rows = evaluate_ready_classifier(_classifier(digits), digits, config, torch.device("cpu"), RunDir(tmp_path / "r"))
    assert [row.attack for row in rows] == ["clean"]


def _fake_c_data(tmp_path, n: int = 12) -> ImageData:
    """A 'cifar10c' test set of n 32-px images, and CIFAR-10-C fog files whose severity s, image i is
    marked s·10 + i (pixel 0, 0 of channel 0)."""
    generator = torch.Generator().manual_seed(0)
    x_test = torch.randint(0, 256, (n, 3, 32, 32), generator=generator, dtype=torch.uint8)
    y_test = torch.arange(n) % 10
    folder = tmp_path / "CIFAR-10-C"
    folder.mkdir()
    images = np.zeros((5 * n, 32, 32, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = [severity * 10 + i for severity in range(1, 6) for i in range(n)]
    np.save(folder / "fog.npy", images)
    np.save(folder / "labels.npy", np.tile(y_test.numpy(), 5).astype(np.uint8))
    return ImageData("cifar10c", x_test, y_test, x_test, y_test, 10)


def test_official_corruptions_are_the_files_at_the_evaluated_indices(tmp_path):
    data = _fake_c_data(tmp_path)
    config = smoke_preset()
    config.data.data_dir, config.data.eval_name = str(tmp_path), "cifar10c"
    assert corruption_source(config) == "official"  # 'auto' on a -C dataset
    indices = torch.tensor([1, 4, 7])
    images = corrupted_images(data, indices, "fog", 3, config, "cpu")
    assert images[:, 0, 0, 0].tolist() == [31, 34, 37]
    np.save(tmp_path / "CIFAR-10-C" / "labels.npy", np.zeros(60, dtype=np.uint8))
    with pytest.raises(ValueError, match="official cifar10c labels differ from the test split's"):
        corrupted_images(data, indices, "fog", 3, config, "cpu")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("evaluate.corruptions", "sometimes", "evaluate.corruptions='sometimes' is invalid: allowed"),
        ("evaluate.corruptions", "official", "evaluate.corruptions='official' is invalid: allowed with --eval-dataset"),
        ("evaluate.corruption_names", "fog,speckle", "evaluate.corruption_names='speckle' is invalid: allowed"),
        ("evaluate.corruption_severities", "0", "evaluate.corruption_severities=0 is invalid: allowed [1, 2, 3, 4, 5]"),
        ("evaluate.corruption_schemes", "SLF,XYZ", "evaluate.corruption_schemes='XYZ' is invalid"),
        ("data.name", "cifar10c", "data.name='cifar10c' is invalid: allowed a pretraining dataset"),
    ],
)
def test_bad_corruption_settings_are_one_line(field, value, message):
    config = smoke_preset()
    set_field(config, field, value)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate(config)
