"""`python -m monitoring`: is the model seeing what it was validated on? A table, a report, an alert."""

from __future__ import annotations

import argparse
import os
import re
import sys
from datetime import datetime, timedelta, timezone

EXIT_OK, EXIT_DRIFT, EXIT_ERROR, EXIT_DEGRADED = 0, 1, 2, 3


def duration(text: str) -> timedelta:
    m = re.fullmatch(r"(\d+)([mhd])", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: use minutes, hours or days, e.g. 30m, 24h, 7d")
    return timedelta(**{{"m": "minutes", "h": "hours", "d": "days"}[m[2]]: int(m[1])})


def timestamp(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use ISO-8601, e.g. 2026-11-28T06:00:00Z") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m monitoring",
        description="Compare the rides the model has been serving with the rides it was validated on: per-column "
        "drift on the zones, the distance and the predicted duration, with thresholds calibrated on contiguous "
        "windows of the reference; an evidently report that shows the same verdict; live error against actual "
        "durations. Each model version in the window is judged against its own reference. Prints a table, then "
        "one line of JSON.",
        epilog="Exit codes: 0 no drift and no degradation, or not enough data; 1 drift (only with --fail-on-drift); "
        "2 error; 3 live error degraded (only with --fail-on-degradation; it wins over 1). ALERT_WEBHOOK_URL, when "
        "set, is POSTed the summary when drift or degradation is found. S3 endpoint and credentials come from "
        "AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY; --retrain-cronjob uses the pod's service account.",
    )
    p.add_argument(
        "--reference",
        required=True,
        metavar="SRC",
        help="models:/NAME (each logged version against its own reference), models:/NAME@ALIAS or models:/NAME/VERSION "
        "(that version's logs only), or a parquet/csv of rides (a TLC month works); local path or s3://",
    )
    p.add_argument(
        "--current",
        required=True,
        metavar="SRC",
        help="a prediction-log prefix (s3://predictions/logs or a directory) or a parquet/csv of rides",
    )
    p.add_argument("--window", type=duration, default=timedelta(hours=24), help="how far back from --until (default 24h)")
    p.add_argument("--since", type=timestamp, help="window start (ISO-8601, UTC); overrides --window")
    p.add_argument("--until", type=timestamp, help="window end (default: now)")
    p.add_argument("--model-version", help="judge the logs of this model version only (default: every version in the window)")
    p.add_argument("--actuals", metavar="SRC",
                   help="actual durations, for live RMSE/MAE: an actuals prefix (s3://actuals/rides or a directory; "
                   "what arrived since the window opened) or a parquet/csv with ride_id and duration")  # fmt: skip
    p.add_argument("--max-rmse-ratio", type=float, default=1.2,
                   help="live RMSE over the version's validation RMSE above which its live error is degraded (default 1.2)")  # fmt: skip
    p.add_argument("--min-actuals", type=int, default=200,
                   help="rides with an actual duration of 1-60 min needed to judge live error or to retrain (default 200)")  # fmt: skip
    p.add_argument("--retrain-cronjob", metavar="NAME",
                   help="on drift or degradation of the serving version, start a Job from this suspended CronJob "
                   "(one at a time; not during --retrain-cooldown after a rejected challenger)")  # fmt: skip
    p.add_argument("--retrain-cooldown", type=duration, default=timedelta(hours=24),
                   help="no retraining this long after the gate rejected a challenger (default 24h)")  # fmt: skip
    p.add_argument("--min-rides", type=int, default=200, help="a version with fewer rides is not judged (default 200)")
    p.add_argument("--false-alarm-rate", type=float, default=0.005,
                   help="on windows like the reference's: the calibrated thresholds' rate of false alarms (default 0.005)")  # fmt: skip
    p.add_argument("--calibration-windows", type=int, default=100,
                   help="contiguous windows of the reference the thresholds rest on (default 100)")  # fmt: skip
    p.add_argument("--calibration-cache", help="where calibrations are kept (default: <report-uri>/calibration, else none)")
    p.add_argument("--report-uri", help="s3://… or a directory: reports/dt=<window end>/ gets summary.json, HTML, JSON, PNG")
    p.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI"),
        help="MLflow server, for models:/ references and for logging the drift metrics (default: $MLFLOW_TRACKING_URI)",
    )
    p.add_argument("--log-to-mlflow", action="store_true", help="log metrics and report to experiment trip-duration-monitoring")
    p.add_argument("--fail-on-drift", action="store_true", help="exit 1 when drift is found (for alerting CronJobs)")
    p.add_argument("--fail-on-degradation", action="store_true", help="exit 3 when live error is degraded")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    # MLflow's default retries keep a user waiting minutes for an unreachable server; ~30 s is enough.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "4")
    os.environ.setdefault("DO_NOT_TRACK", "1")  # evidently's telemetry
    import logging
    import warnings

    import pyarrow

    # pyarrow's multi-threaded CPU pool, once pandas has used it, aborts the interpreter at exit now and then.
    pyarrow.set_cpu_count(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    warnings.filterwarnings("ignore")
    for noisy in ("botocore", "urllib3", "mlflow", "matplotlib", "evidently"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from monitoring.inputs import InputError
    from monitoring.job import UsageError, run

    try:
        summary = run(args)
    except (InputError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    except Exception as e:  # S3 or MLflow unreachable, or anything unforeseen: one line, never exit 1 ("drift")
        logging.getLogger("monitoring").debug("unexpected error", exc_info=True)
        print(f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    if summary["degraded"] and args.fail_on_degradation:
        sys.exit(EXIT_DEGRADED)
    sys.exit(EXIT_DRIFT if summary["drift"] and args.fail_on_drift else EXIT_OK)
