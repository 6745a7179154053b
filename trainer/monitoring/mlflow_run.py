"""MLflow as an optional second logger (log.mlflow=true): the same scalars as TensorBoard, the
config as params, the final metrics, one MLflow run per run dir.

MLflow's own client writes everything (MlflowClient.log_batch), at log steps only, from rank 0.
The store is log.mlflow_uri, else $MLFLOW_TRACKING_URI, else MLflow's own default for a local
store: a SQLite file, mlflow.db in the working directory (beside outputs/), no server needed.
MLflow 3 refuses its older ./mlruns file store unless MLFLOW_ALLOW_FILE_STORE=true is set.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from trainer.config import ConfigError

RUN_FILE = "mlflow.json"  # in the run dir: which MLflow run a resume continues
_PARAMS_PER_BATCH = 100  # MLflow's limit per log_batch request
_MAX_PARAM_CHARS = 6000


def tracking_uri(configured: str | None) -> str:
    """log.mlflow_uri, else $MLFLOW_TRACKING_URI, else mlflow.db in the working directory (by its
    full path, so that `mlflow ui` started anywhere finds it)."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def where(cfg: DictConfig) -> str | None:
    """The line that says where MLflow's copy of the run is, for the display."""
    if not cfg.log.get("mlflow"):
        return None
    return f"mlflow: mlflow ui --backend-store-uri {tracking_uri(cfg.log.mlflow_uri)} (experiment {cfg.log.mlflow_experiment})"


def flat_params(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as MLflow params: dotted keys, values as text (lists as YAML writes them)."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = str(node)[:_MAX_PARAM_CHARS]

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


class MLflowRun:
    """One MLflow run: started (or continued, on resume) when the run starts, ended with its status."""

    def __init__(self, cfg: DictConfig, run_dir: Path, resumed: bool):
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri(cfg.log.mlflow_uri)
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its store set-up lines would cut through the display
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            previous = _previous_run(run_dir, self.uri) if resumed else None
            if previous:
                self.run_id = previous
                self.client.update_run(self.run_id, status="RUNNING")
                return
            name = cfg.log.mlflow_experiment
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            run = self.client.create_run(experiment_id, run_name=_run_name(run_dir),
                                         tags={"trainer.run_dir": str(run_dir.resolve())})
        except MlflowException as e:
            why = " ".join(str(e).split())[:300]
            if "MLFLOW_ALLOW_FILE_STORE" in str(e):
                why = ("MLflow refuses its file store (maintenance mode) unless MLFLOW_ALLOW_FILE_STORE=true is set; "
                       "the default, a sqlite:/// store, needs no setting")
            raise ConfigError(f"log.mlflow_uri={self.uri}: {why}") from None
        self.run_id = run.info.run_id
        params = [Param(k, v) for k, v in flat_params(cfg).items()]
        for i in range(0, len(params), _PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + _PARAMS_PER_BATCH])
        (run_dir / RUN_FILE).write_text(json.dumps({"tracking_uri": self.uri, "run_id": self.run_id}) + "\n")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def end(self, error: BaseException | None) -> None:
        """FINISHED; KILLED when a stop signal ended it (it resumes); FAILED on an error."""
        from trainer.preemption import Preempted

        status = "FINISHED" if error is None else "KILLED" if isinstance(error, Preempted) else "FAILED"
        self.client.set_terminated(self.run_id, status)


def _previous_run(run_dir: Path, uri: str) -> str | None:
    """The MLflow run this run dir logged to before, if it was in the same store."""
    path = run_dir / RUN_FILE
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return saved.get("run_id") if saved.get("tracking_uri") == uri else None


def _run_name(run_dir: Path) -> str:
    """The run dir as the user knows it: relative to the working directory (outputs/DATE/TIME,
    multirun/DATE/TIME/0_clip.max_norm=0.5), else its full path."""
    try:
        return str(run_dir.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(run_dir.resolve())
