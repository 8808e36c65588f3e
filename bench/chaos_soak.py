"""The chaos soak's long run (issue 21): jobs from several organizations on two workers over
PostgreSQL + a private Redis + moto's S3 server while workers are SIGKILLed, Redis and the
API restart and S3 fails for a while; prints the figures as JSON.

    PYTHONPATH=$PWD .venv/bin/python bench/chaos_soak.py --orgs 3 --jobs-per-org 10 \\
        --duration 1800 --fault-interval 20 --s3-outage 10

Needs the test services (PostgreSQL at DORADO_TEST_PG_URL, redis-server on the PATH). The
short run of the same scenario is tests/faults/test_chaos_soak.py. Exit status 1 when a
check failed (the problems are printed, the processes' logs are kept in --workdir).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import MODEL_CACHE, fresh_postgres_database  # noqa: E402
from tests.faults.chaos import FAULTS, SoakConfig, run_soak  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    short = SoakConfig()
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--orgs", type=int, default=short.orgs)
    parser.add_argument("--jobs-per-org", type=int, default=10, help="jobs submitted at first")
    parser.add_argument("--epochs", type=int, default=short.epochs)
    parser.add_argument("--checkpoint-every", type=int, default=short.checkpoint_every)
    parser.add_argument(
        "--duration", type=float, default=600.0, help="keep submitting jobs this long (s)"
    )
    parser.add_argument("--keep-unfinished", type=int, default=short.keep_unfinished)
    parser.add_argument("--fault-interval", type=float, default=short.fault_interval_s)
    parser.add_argument(
        "--faults",
        default=",".join(FAULTS),
        help=f"the cycle of faults, comma-separated, from {', '.join(FAULTS)}; "
        "repeat one to make it more frequent",
    )
    parser.add_argument("--s3-outage", type=float, default=short.s3_outage_s, help="seconds")
    parser.add_argument("--redis-down", type=float, default=short.redis_down_s, help="seconds")
    parser.add_argument("--max-job-retries", type=int, default=short.max_job_retries)
    parser.add_argument("--timeout", type=float, default=None, help="default: duration + 900")
    parser.add_argument("--workdir", type=Path, default=None, help="logs and the report")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    faults = tuple(f.strip() for f in args.faults.split(",") if f.strip())
    if args.orgs < 1 or args.jobs_per_org < 1 or args.fault_interval <= 0:
        raise SystemExit("--orgs and --jobs-per-org must be >= 1, --fault-interval > 0")
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        raise SystemExit(f"unknown fault(s) {unknown}; known: {', '.join(FAULTS)}")
    config = SoakConfig(
        orgs=args.orgs,
        jobs_per_org=args.jobs_per_org,
        epochs=args.epochs,
        checkpoint_every=args.checkpoint_every,
        faults=faults,
        fault_interval_s=args.fault_interval,
        cycle_faults=True,
        duration_s=args.duration,
        keep_unfinished=args.keep_unfinished,
        s3_outage_s=args.s3_outage,
        redis_down_s=args.redis_down,
        max_job_retries=args.max_job_retries,
        timeout_s=args.timeout or args.duration + 900,
    )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dorado-chaos-soak-"))
    print(f"logs in {workdir}", flush=True)
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto logs every request

    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    s3.start()
    try:
        import boto3

        host, port = s3.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        ).create_bucket(Bucket="dorado-chaos")
        with fresh_postgres_database("dorado_chaos") as database_url:
            report, _ = run_soak(
                config, database_url, endpoint, "dorado-chaos", MODEL_CACHE, workdir=workdir
            )
    finally:
        s3.stop()
    print(json.dumps(report.figures(), indent=2))
    for problem in report.problems:
        print(f"PROBLEM: {problem}")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
