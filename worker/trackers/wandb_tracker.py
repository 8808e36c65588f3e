"""A job's run on Weights & Biases: wandb.ai, a self-hosted server (``WANDB_BASE_URL``), or
offline run files (``WANDB_MODE=offline``, synced later with ``wandb sync``).

The API key is the organization's (``/v1/organization/integrations``), passed per run, so
several organizations' jobs never share a login. The run id is the job id: a resumed job
continues its run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from worker.trackers.base import Outcome, RunInfo, flatten

INIT_TIMEOUT_SECONDS = 30.0


class WandbTracker:
    label = "Weights & Biases"

    def __init__(self, options: dict[str, Any], api_key: str, run_dir: Path) -> None:
        self.options = options
        self.api_key = api_key
        self.run_dir = run_dir
        self.run: Any = None

    def start(self, run: RunInfo) -> None:
        import wandb

        self.run_dir.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(
            api_key=self.api_key,
            init_timeout=INIT_TIMEOUT_SECONDS,
            console="off",  # the worker's own logs are not the run's
            silent=True,
            x_disable_stats=True,  # the worker's machine metrics are not the job's
        )
        self.run = wandb.init(
            project=self.options["project"],
            entity=self.options.get("entity"),
            name=self.options.get("name") or run.name,
            tags=self.options.get("tags"),
            config=flatten(run.params),
            id=re.sub(r"[^A-Za-z0-9_-]", "-", run.job_id),
            resume="allow",
            dir=str(self.run_dir),
            reinit="create_new",
            settings=settings,
        )
        self.run.summary.update({"dorado/job_id": run.job_id})

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self._run().log(metrics, step=step)

    def finish(self, outcome: Outcome) -> None:
        run = self._run()
        run.summary.update(
            {
                "dorado/status": outcome.status,
                "dorado/fine_tuned_model": outcome.fine_tuned_model,
                "dorado/adapter_uri": outcome.adapter_uri,
                "dorado/trained_tokens": outcome.trained_tokens,
            }
        )
        run.finish(exit_code=0 if outcome.succeeded or outcome.status == "paused" else 1)
        self.run = None

    def _run(self) -> Any:
        if self.run is None:
            raise RuntimeError("the W&B run was never started")
        return self.run


def run_dir(default: Path) -> Path:
    """Where run files go: ``WANDB_DIR`` when the operator set it (W&B's own variable)."""
    return Path(os.environ.get("WANDB_DIR") or default)
