"""Experiment trackers (a job's ``integrations``): Weights & Biases and MLflow.

The engine's Reporter feeds them (:class:`worker.trackers.reporter.TrackingReporter`); every
tracker call runs on one background thread behind a bounded queue
(:class:`worker.trackers.hub.TrackerHub`), so a tracker that is slow or down never fails or
slows the training: it is retried, then given up on with a warning event on the job.
"""

from worker.trackers.reporter import job_reporter

__all__ = ["job_reporter"]
