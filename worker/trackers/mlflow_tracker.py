"""A job's run on the operator's MLflow tracking server (DORADO_MLFLOW_TRACKING_URI).

``MlflowClient`` rather than the fluent ``mlflow.start_run``: no process-wide active run, and
each call names its run id. A resumed job continues the run tagged with its job id.
"""

from __future__ import annotations

import os
import time

from worker.trackers.base import Outcome, RunInfo, flatten

JOB_TAG = "dorado.job_id"
MAX_PARAM_LENGTH = 500
STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}


class MlflowTracker:
    label = "MLflow"

    def __init__(self, tracking_uri: str, experiment: str, run_name: str | None) -> None:
        # The hub retries with its own bounded backoff; MLflow's default (7 retries with
        # exponential backoff per request) would hold the tracker thread for minutes.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment = experiment
        self.run_name = run_name
        self.run_id: str | None = None

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self.client.create_experiment(self.experiment))
        except MlflowException:  # another worker created it meanwhile
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return str(found.experiment_id)

    def start(self, run: RunInfo) -> None:
        from mlflow.entities import Param

        experiment_id = self._experiment_id()
        previous = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`{JOB_TAG}` = '{run.job_id}'", max_results=1
        )
        if previous:
            self.run_id = previous[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            return
        created = self.client.create_run(
            experiment_id,
            run_name=self.run_name or run.name,
            tags={JOB_TAG: run.job_id, **run.tags},
        )
        self.run_id = created.info.run_id
        params = [
            Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in flatten(run.params).items()
        ]
        self.client.log_batch(self.run_id, params=params)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        self.client.log_batch(self._run(), metrics=batch)

    def finish(self, outcome: Outcome) -> None:
        run_id = self._run()
        for key, value in (
            ("dorado.status", outcome.status),
            ("dorado.fine_tuned_model", outcome.fine_tuned_model),
            ("dorado.adapter_uri", outcome.adapter_uri),
        ):
            if value is not None:
                self.client.set_tag(run_id, key, value)
        if outcome.trained_tokens is not None:
            self.client.log_metric(run_id, "trained_tokens", float(outcome.trained_tokens))
        status = STATUS.get(outcome.status)
        if status is not None:  # a paused job's run stays open for its resumption
            self.client.set_terminated(run_id, status=status)

    def _run(self) -> str:
        if self.run_id is None:
            raise RuntimeError("the MLflow run was never started")
        return self.run_id
