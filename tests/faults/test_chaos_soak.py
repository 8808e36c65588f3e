"""The chaos soak's short run (issue 21): 3 organizations x 7 jobs on two workers while a
worker is SIGKILLed twice, Redis is killed and restarted, the API restarts and S3 fails for
a while. Every job succeeds with each metrics step exactly once, every file and adapter
downloads, and /healthz answers throughout except during the API's own restart.
The long run with knobs is ``bench/chaos_soak.py``."""

from __future__ import annotations

from tests.conftest import MODEL_CACHE
from tests.faults.chaos import SoakConfig, run_soak


def test_chaos_soak(tmp_path, postgres_url, s3_server):
    config = SoakConfig()
    report, soak = run_soak(
        config,
        postgres_url,
        s3_server["endpoint"],
        s3_server["bucket"],
        MODEL_CACHE,
        workdir=tmp_path,
    )
    figures = report.figures()
    print(figures)
    assert report.problems == [], (report.problems, figures, soak.cluster.logs())
    assert figures["jobs"] == config.orgs * config.jobs_per_org
    assert figures["organizations"] == config.orgs
    # Every fault of the schedule really happened.
    assert figures["faults"] == {
        "kill_worker": 2,
        "restart_redis": 1,
        "restart_api": 1,
        "s3_outage": 1,
    }
    assert report.api_restarts and figures["healthz_polls"] > 100
