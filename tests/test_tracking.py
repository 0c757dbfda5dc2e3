"""Live tracking (bench.runs.tracking): what a tiny `bench run --track ...` logs to TensorBoard, MLflow and
W&B (offline), read back from each library's own files; and that tracking never stops or changes a run.

MLflow runs against a file store in tmp_path (``MLFLOW_ALLOW_FILE_STORE``: MLflow 3 refuses it otherwise,
and its sqlite default needs SQLAlchemy, which mlflow-skinny lacks). W&B 0.31 offline writes no
``config.yaml`` or ``wandb-summary.json``: its run, history and summary records are all in the run's
``.wandb`` file, which ``wandb_records`` reads (a LevelDB-style log of ``wandb_internal_pb2.Record``s)."""

from __future__ import annotations

import csv
import glob
import json
import re
import struct
import sys
from pathlib import Path

import pytest
import torch
from tiny_run import TINY, TINY_WITH_FIGURES

from bench.cli.app import build_parser, main
from bench.cli.commands import build_request, selected_methods
from bench.cli.experiment import with_experiment
from bench.config import ConfigError
from bench.engine import progress
from bench.methodkit import registry
from bench.runs import tracking
from bench.runs.tracking import FanOut, LocalTracker, Tracker, read_local, resolve_track
from bench.runs.tracking_backends import row_key
from bench.runs.train import pretrain
from bench.store.results import ResultsStore, RunDir

BACKENDS = ("mlflow", "tensorboard", "wandb")


# ------------------------------------------------------------------ the interface, without a library


def test_track_values_resolve_to_local_plus_the_backends_named():
    assert resolve_track(None) == ("local",)
    assert resolve_track(["wandb", "mlflow", "wandb"]) == ("local", "wandb", "mlflow")
    assert resolve_track(["none"]) == ()
    with pytest.raises(ConfigError, match="--track none is invalid with \\['mlflow'\\]"):
        resolve_track(["none", "mlflow"])
    with pytest.raises(ConfigError, match="'comet' is invalid: allowed local, tensorboard"):
        resolve_track(["comet"])


def test_track_is_an_experiment_file_key_and_the_command_line_wins(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text("methods: [simclr]\ntrack: [mlflow, wandb]\n")
    for extra, expected in (([], ("local", "mlflow", "wandb")), (["--track", "none"], ())):
        parser, argv = build_parser(), ["run", "--config", str(path), *extra]  # the file sets the parser's defaults
        args = parser.parse_args(argv)
        args.argv = argv[1:]
        args = with_experiment(parser, argv, args)
        assert build_request(args, selected_methods(args)).track == expected
    path.write_text("methods: [simclr]\ntrack: [comet]\n")
    assert main(["run", "--config", str(path), "--dry-run"]) == 2
    assert f"{path}: key 'track' holds 'comet': allowed" in capsys.readouterr().err


class Recorder(Tracker):
    def __init__(self, fail_at: int | None = None):
        self.steps: list[tuple[int, dict[str, float]]] = []
        self.fail_at, self.status = fail_at, None

    def log_step(self, step, metrics):
        if step == self.fail_at:
            raise ConnectionError("server down\nsecond line of the error")
        self.steps.append((step, dict(metrics)))

    def finish(self, status="FINISHED"):
        self.status = status


def _pretrain(digits, config, run_dir: Path, sink=None):
    cls = registry.get("simclr")
    method = cls(cls.make_params({}))
    torch.manual_seed(0)
    model = method.build_model(config.model.arch)
    if sink is None:
        return pretrain(method, model, digits.x_train[:64], config, RunDir(run_dir), torch.device("cpu")), model
    with progress.metrics_to(sink):
        return pretrain(method, model, digits.x_train[:64], config, RunDir(run_dir), torch.device("cpu")), model


@pytest.mark.e2e
def test_a_backend_failing_mid_run_is_dropped_with_one_line_and_the_numbers_do_not_move(
    digits, tiny_config, tmp_path, capsys
):
    tiny_config.pretrain.batch_size = 16  # 64 images: four steps
    plain, plain_model = _pretrain(digits, tiny_config, tmp_path / "plain")
    failing, healthy = Recorder(fail_at=2), Recorder()
    fan_out = FanOut({"flaky": lambda: failing, "healthy": lambda: healthy})
    fan_out.start({"seed": 0})
    tracked, tracked_model = _pretrain(digits, tiny_config, tmp_path / "tracked", fan_out)
    fan_out.finish()

    assert tracked.history == plain.history  # bitwise the same numbers
    for (name, a), (_, b) in zip(plain_model.state_dict().items(), tracked_model.state_dict().items()):
        assert torch.equal(a, b), name
    lines = [line for line in capsys.readouterr().err.splitlines() if "tracking:" in line]
    assert lines == ["tracking: flaky failed (ConnectionError: server down); the run goes on"]
    assert [step for step, _ in failing.steps] == [0, 1] and failing.status == "FAILED"
    assert [step for step, _ in healthy.steps] == [0, 1, 2, 3] and healthy.status == "FINISHED"
    first = healthy.steps[0][1]
    assert first["pretrain/loss"] == plain.history[0]["loss"] and first["pretrain/lr"] == plain.history[0]["lr"]
    assert first["pretrain/step_time_s"] > 0 and first["pretrain/images_per_s"] > 0


def test_a_backend_that_cannot_open_costs_only_itself(capsys):
    def broken():
        raise ImportError("No module named 'mlflow'")

    healthy = Recorder()
    fan_out = FanOut({"mlflow": broken, "healthy": lambda: healthy})
    fan_out.start({})
    fan_out.log_step(0, {"pretrain/loss": 1.0})
    fan_out.finish()
    assert healthy.steps == [(0, {"pretrain/loss": 1.0})]
    assert capsys.readouterr().err.count("tracking: mlflow failed (ImportError: No module named 'mlflow')") == 1
    tracking._MISSING.discard("mlflow")


def test_the_local_log_cuts_a_torn_last_line_before_appending(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "pretrain/loss": 2.0}\n{"step": 1, "pretra')  # killed mid-line
    assert read_local(path) == [{"step": 0, "pretrain/loss": 2.0}]
    local = LocalTracker(path)
    local.start({})
    local.log_step(1, {"pretrain/loss": 1.5, "pretrain/lr": float("nan")})
    local.finish()
    lines = read_local(path)
    assert [line["step"] for line in lines] == [0, 1] and lines[1]["pretrain/lr"] is None


# ------------------------------------------------------------------ one tiny run, every backend


def wandb_records(path: Path) -> list:
    """Every record of a ``.wandb`` file: a 7-byte header (``:W&B``, magic, version), then 32 KiB blocks of
    chunks (crc32 4 bytes, length 2, type 1: full 1, first 2, middle 3, last 4; a block's tail shorter
    than a chunk header is padding)."""
    from wandb.proto import wandb_internal_pb2  # deferred: an optional package

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    position, pieces, records = 7, b"", []
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0:  # zero padding to the block's end
            position += left
            continue
        pieces += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            records.append(record)
            pieces = b""
    return records


def _items(items) -> dict[str, object]:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def _tracked_run(root: Path, argv: list[str], tiny: list[str] = TINY) -> tuple[int, str]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"file:{root / 'mlruns'}")
        patch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        for variable in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
            patch.setenv(variable, str(root / "wandb-home"))
        patch.setenv("WANDB_MODE", "offline")
        patch.setenv("WANDB_SILENT", "true")
        patch.setattr(tracking, "_MISSING", set())
        code = main(["run", "--methods", "simclr", *tiny, "--results-dir", str(root / "r"), *argv])
    return code, str(root)


def _all_tracked(root: Path) -> None:
    argv = ["--reports-dir", str(root / "rep"), *[flag for name in BACKENDS for flag in ("--track", name)]]
    code, _ = _tracked_run(root, argv, TINY_WITH_FIGURES)  # the report's figures are logged too
    assert code == 0


@pytest.fixture(scope="module")
def tracked_run(shared_folder):
    """One tiny `bench run` with all three trackers (offline W&B, MLflow file store under tmp), made once per
    session (``shared_folder``: this module's tests are often split between pytest-xdist's workers)."""
    for package in ("mlflow", "wandb", "tensorboard"):  # the `track` extra (in `dev`)
        pytest.importorskip(package)
    root = shared_folder("tracked", _all_tracked)
    run_dir = next((root / "r" / "runs").iterdir())
    history = list(csv.DictReader((run_dir / "pretrain_history.csv").open()))
    return root, run_dir, history, RunDir(run_dir).read_rows()


@pytest.mark.e2e
def test_tensorboard_event_files_hold_config_steps_and_rows(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # deferred: optional
    from tensorboard.plugins.hparams import plugin_data_pb2  # deferred: optional

    root, run_dir, history, rows = tracked_run
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    loss = events.Scalars("pretrain/loss")
    assert [event.step for event in loss] == [int(row["step"]) for row in history]
    assert [event.value for event in loss] == pytest.approx([float(row["loss"]) for row in history], rel=1e-6)
    assert len(events.Scalars("pretrain/images_per_s")) == len(history)
    assert len(events.Scalars("finetune/SLF/loss")) == -(-1437 // 128)  # one per SLF batch, one epoch
    for row in rows:
        assert events.Scalars(row_key(row))[0].value == pytest.approx(row.value, abs=1e-4)
    hparams = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    ).session_start_info.hparams
    assert hparams["config.pretrain.epochs"].number_value == 1 and hparams["method"].string_value == "simclr"
    report = EventAccumulator(str(root / "rep" / "tensorboard"), size_guidance={"images": 0})
    report.Reload()
    assert report.Tags()["images"], "the report's PNG figures"


@pytest.mark.e2e
def test_mlflow_store_holds_config_steps_rows_and_the_report_figures(tracked_run):
    from mlflow import MlflowClient  # deferred: optional

    root, run_dir, history, rows = tracked_run
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # before the client: the run may be another worker's
        client = MlflowClient(f"file:{root / 'mlruns'}")
        experiment = client.get_experiment_by_name("acl-bench").experiment_id
        (run,) = client.search_runs([experiment], f"tags.`bench.run_id` = '{run_dir.name}'")
        assert run.info.status == "FINISHED" and run.data.tags["bench.kind"] == "run"
        assert run.data.params["config.pretrain.epochs"] == "1" and run.data.params["seed"] == "0"
        assert run.data.params["config.pretrain.batch_size"] == "256"
        loss = client.get_metric_history(run.info.run_id, "pretrain/loss")
        assert [point.step for point in loss] == [int(row["step"]) for row in history]
        assert [point.value for point in loss] == pytest.approx([float(row["loss"]) for row in history], rel=1e-9)
        assert len(client.get_metric_history(run.info.run_id, "pretrain/step_time_s")) == len(history)
        for row in rows:
            assert run.data.metrics[row_key(row)] == pytest.approx(row.value, abs=1e-4)
        (report,) = client.search_runs([experiment], "tags.`bench.kind` = 'report'")
        figures = {Path(info.path).name for info in client.list_artifacts(report.info.run_id, "figures")}
    assert figures and figures == {path.name for path in (root / "rep" / "figures").iterdir()}


@pytest.mark.e2e
def test_wandb_offline_run_holds_config_steps_and_rows(tracked_run):
    root, run_dir, history, rows = tracked_run
    by_name = {}
    for path in glob.glob(str(root / "wandb-home" / "wandb" / "offline-run-*" / "*.wandb")):
        records = wandb_records(Path(path))
        (start,) = [record.run for record in records if record.WhichOneof("record_type") == "run"]
        by_name[start.display_name] = records
    assert set(by_name) == {run_dir.name, "report"}
    records = by_name[run_dir.name]
    (start,) = [record.run for record in records if record.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in start.config.update}
    assert config["config"]["pretrain"]["epochs"] == 1 and config["run_id"] == run_dir.name
    steps = [_items(r.history.item) for r in records if r.WhichOneof("record_type") == "history"]
    pretraining = [step for step in steps if "pretrain/loss" in step]
    assert [step["pretrain/step"] for step in pretraining] == [int(row["step"]) for row in history]
    assert [step["pretrain/loss"] for step in pretraining] == pytest.approx([float(r["loss"]) for r in history])
    assert [step["finetune/SLF/step"] for step in steps if "finetune/SLF/loss" in step] == list(range(12))
    summary = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            summary.update(_items(record.summary.update))
    for row in rows:
        assert summary[row_key(row)] == pytest.approx(row.value, abs=1e-4)
    assert any(r.WhichOneof("record_type") == "artifact" for r in by_name["report"])


@pytest.mark.e2e
def test_the_local_log_holds_every_step(tracked_run):
    _, run_dir, history, _ = tracked_run
    lines = read_local(run_dir / "metrics.jsonl")
    assert [line["pretrain/loss"] for line in lines if "pretrain/loss" in line] == [
        pytest.approx(float(row["loss"]), rel=1e-9) for row in history
    ]
    assert sum("finetune/SLF/loss" in line for line in lines) == 12


@pytest.mark.e2e
def test_missing_packages_are_one_line_each_and_the_run_is_unchanged(tracked_run, tmp_path, capsys, shared_run):
    # the same run untracked (made once per session; tests/test_reliability.py reads it too) has the numbers of
    # the run with every backend and of the run whose backends are all missing
    (untracked,) = ResultsStore(shared_run("--methods", "simclr", *TINY) / "r").run_dirs()
    rows = untracked.read_rows()
    with pytest.MonkeyPatch.context() as patch:
        for module in ("mlflow", "wandb", "torch.utils.tensorboard"):
            patch.setitem(sys.modules, module, None)  # `import mlflow` raises ImportError
        argv = ["--reports-dir", str(tmp_path / "rep"), *[flag for name in BACKENDS for flag in ("--track", name)]]
        code, _ = _tracked_run(tmp_path, argv)
    assert code == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tracking:")]
    expected = [
        rf"tracking: {name} failed \((ModuleNotFound|Import)Error: import of {module} halted; None in sys.modules\); "
        "the run goes on"
        for name, module in (("mlflow", "mlflow"), ("tensorboard", "torch.utils.tensorboard"), ("wandb", "wandb"))
    ]
    assert len(lines) == 3 and all(re.fullmatch(pattern, line) for pattern, line in zip(expected, sorted(lines)))
    run_dir = next((tmp_path / "r" / "runs").iterdir())
    columns = ("scheme", "attack", "metric", "value", "epsilon", "n_eval", "flags")
    numbers = [[getattr(row, column) for column in columns] for row in RunDir(run_dir).read_rows()]
    assert numbers == [[getattr(row, column) for column in columns] for row in rows]
    assert numbers == [[getattr(row, column) for column in columns] for row in tracked_run[3]]
    assert not (run_dir / "tensorboard").exists() and read_local(run_dir / "metrics.jsonl")
