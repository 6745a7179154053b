"""log.mlflow=true: MLflow as a second logger, read back with MLflow's own client."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, TINY, make_config, read_scalars, sigterm_during_step
from trainer import preflight
from trainer.build import build
from trainer.config import ConfigError
from trainer.loop import train
from trainer.monitoring.display import Display
from trainer.preemption import Preempted

pytest.importorskip("mlflow")  # the test extra has it; a machine without the extra skips these

COMMON = [*TINY, "trainer.log_every=1", "trainer.eval_every=4", "log.mlflow=true", "model.dropout=0.1"]


def store(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, MlflowClient(tracking_uri=uri)


def run_id(run_dir):
    return json.loads((run_dir / "mlflow.json").read_text())["run_id"]


@pytest.mark.integration
def test_mlflow_gets_tensorboards_scalars_the_config_and_the_final_metrics(tmp_path):
    """Every scalar TensorBoard got, at the same steps with the same values; the resolved config as
    params (dotted keys); the final metrics; the run named by its dir, FINISHED."""
    uri, client = store(tmp_path)
    run = build(make_config(*COMMON, "trainer.max_steps=8", f"log.mlflow_uri={uri}", "log.mlflow_experiment=sweep-a"))
    summary = train(run, tmp_path / "run", Display(8, quiet=True), hparams={"clip": "norm"})
    got = client.get_run(run_id(tmp_path / "run"))
    assert got.info.status == "FINISHED"
    assert client.get_experiment(got.info.experiment_id).name == "sweep-a"
    assert got.data.tags["trainer.run_dir"] == str((tmp_path / "run").resolve())
    params = got.data.params
    assert params["optim.lr"] == "0.0003" and params["model.num_layers"] == "1" and params["clip._target_"] == \
        "trainer.clipping.NormClip" and params["optim.betas"] == "[0.9, 0.95]" and params["task"] == "auto"
    assert len(params) > 50  # every key, not a selection
    tensorboard = read_scalars(tmp_path / "run")
    assert {"train/loss", "train/grad_norm", "train/grad_norm_clipped", "train/lr", "eval/loss",
            "perf/tokens_per_sec"} <= set(tensorboard)
    for tag, points in tensorboard.items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(got.info.run_id, tag))
        assert [s for s, _ in history] == [s for s, _ in points], tag
        for (_, ours), (_, theirs) in zip(points, history):
            assert theirs == pytest.approx(ours, rel=1e-6), tag  # TensorBoard keeps float32
    assert got.data.metrics["hparams/final_eval_loss"] == pytest.approx(summary["final eval loss"], rel=1e-9)
    assert got.data.metrics["hparams/best_eval_loss"] == pytest.approx(summary["best eval loss"], rel=1e-9)


@pytest.mark.integration
def test_a_preempted_run_is_killed_in_mlflow_and_its_resume_continues_the_same_run(tmp_path, monkeypatch):
    uri, client = store(tmp_path)
    common = [*COMMON, "trainer.max_steps=10", f"log.mlflow_uri={uri}"]
    sigterm_during_step(monkeypatch, 6)
    with pytest.raises(Preempted):
        train(build(make_config(*common)), tmp_path / "run", Display(10, quiet=True))
    monkeypatch.undo()
    first = run_id(tmp_path / "run")
    assert client.get_run(first).info.status == "KILLED"
    train(build(make_config(*common, "checkpoint.resume=auto")), tmp_path / "run", Display(10, quiet=True))
    assert run_id(tmp_path / "run") == first and client.get_run(first).info.status == "FINISHED"
    assert len(client.search_runs([client.get_run(first).info.experiment_id])) == 1
    losses = client.get_metric_history(first, "train/loss")
    assert sorted(m.step for m in losses) == list(range(1, 11))  # each step once, across the stop
    tensorboard = dict(read_scalars(tmp_path / "run")["train/loss"])
    for m in losses:
        assert m.value == pytest.approx(tensorboard[m.step], rel=1e-6)


@pytest.mark.integration
def test_a_store_mlflow_refuses_is_one_line_and_a_missing_mlflow_names_the_extra(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"^log.mlflow_uri=\./mlruns: .*MLFLOW_ALLOW_FILE_STORE"):
        train(build(make_config(*COMMON, "trainer.max_steps=2", "log.mlflow_uri=./mlruns")), tmp_path / "run",
              Display(2, quiet=True))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^log.mlflow=true needs mlflow: pip install 'trainer\[mlflow\]'$"):
        preflight.check(make_config(*COMMON))


@pytest.mark.slow
def test_without_log_mlflow_nothing_of_mlflow_runs(tmp_path):
    """The default: mlflow is never imported and no store is written."""
    code = ("import sys; from pathlib import Path; from trainer.build import build; from trainer.loop import train; "
            "from trainer.config import compose_config; from trainer.monitoring.display import Display; "
            f"train(build(compose_config(['+debug=tiny', 'trainer.max_steps=2'])), Path('{tmp_path / 'run'}'), "
            "Display(2, quiet=True)); print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "run" / "mlflow.json").exists()
