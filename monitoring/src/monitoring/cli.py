"""`python -m monitoring`: is the model seeing what it was trained on? A table, a report, an alert."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

EXIT_OK, EXIT_DRIFT, EXIT_ERROR = 0, 1, 2
log = logging.getLogger("monitoring")


class UsageError(Exception):
    pass


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
        description="Compare the rides the model has been scoring with its reference set: per-feature and "
        "prediction drift (alibi-detect TabularDrift, thresholds calibrated at the window size), an evidently "
        "report, optional performance against actual durations. Prints a table, then one line of JSON.",
        epilog="Exit codes: 0 no drift or not enough data; 1 drift (only with --fail-on-drift); 2 error. "
        "ALERT_WEBHOOK_URL, when set, is POSTed the summary when drift is found. S3 endpoint and "
        "credentials come from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY.",
    )
    p.add_argument(
        "--reference",
        required=True,
        metavar="SRC",
        help="models:/trip_duration@staging, models:/NAME/VERSION, models:/NAME (the version in the logs), "
        "or a parquet/csv of rides (a TLC month works); local path or s3://",
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
    p.add_argument("--model-version", help="logs of this model version only (default: the newest in the window)")
    p.add_argument("--actuals", metavar="SRC", help="parquet/csv with ride_id and duration, for RMSE/MAE")
    p.add_argument("--min-rides", type=int, default=200, help="below this, say 'not enough data' (default 200)")
    p.add_argument("--false-alarm-rate", type=float, default=0.005, help="on windows like the reference (default 0.005)")
    p.add_argument("--calibration-runs", type=int, default=1000, help="resampled windows to calibrate on (default 1000)")
    p.add_argument("--calibration-cache", help="where calibrations are kept (default: <report-uri>/calibration, else none)")
    p.add_argument("--report-uri", help="s3://… or a directory: reports/dt=<window end>/ gets summary.json, HTML, JSON, PNG")
    p.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI"),
        help="MLflow server, for models:/ references and for logging the drift metrics (default: $MLFLOW_TRACKING_URI)",
    )
    p.add_argument("--log-to-mlflow", action="store_true", help="log metrics and report to experiment trip-duration-monitoring")
    p.add_argument("--fail-on-drift", action="store_true", help="exit 1 when drift is found (for alerting CronJobs)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    # MLflow's default retries keep a user waiting minutes for an unreachable server; ~30 s is enough.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "4")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    os.environ.setdefault("DO_NOT_TRACK", "1")  # evidently's telemetry
    import pyarrow

    # pyarrow's multi-threaded CPU pool, once pandas has used it, aborts the interpreter at exit now and then.
    pyarrow.set_cpu_count(1)
    import warnings

    warnings.filterwarnings("ignore")
    for noisy in ("botocore", "urllib3", "mlflow", "matplotlib", "evidently"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from monitoring.inputs import InputError

    try:
        summary = run(args)
    except (InputError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    except Exception as e:  # S3 or MLflow unreachable and the like: one line, not a traceback
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(e, (BotoCoreError, ClientError, ConnectionError, OSError)):
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
            sys.exit(EXIT_ERROR)
        raise
    sys.exit(EXIT_DRIFT if summary["drift"] and args.fail_on_drift else EXIT_OK)


def run(args) -> dict:
    from monitoring import drift, storage
    from monitoring.inputs import load_actuals, load_current, load_reference, performance

    until = args.until or datetime.now(timezone.utc)
    since = args.since or until - args.window
    if since >= until:
        raise UsageError(f"empty window: --since {since.isoformat()} is not before --until {until.isoformat()}")

    current = load_current(args.current, since, until, args.model_version)
    reference = load_reference(args.reference, args.tracking_uri, current.model_version)
    for problem in current.unreadable:
        log.warning("skipped unreadable log object %s", problem)

    summary = {
        "drift": False,
        "status": "ok",
        "n_reference": len(reference.frame),
        "n_current": len(current.frame),
        "reference": reference.source,
        "current": current.source,
        "window": {"since": since.isoformat(), "until": until.isoformat()},
        "model_version": current.model_version,
        "log_objects": current.objects,
        "unreadable_objects": len(current.unreadable),
        "duplicates_removed": current.duplicates,
        "other_versions": current.other_versions,
        "columns": {},
        "performance": None,
        "report": None,
    }
    if len(reference.frame) < 2 * args.min_rides:
        raise UsageError(f"{reference.source}: only {len(reference.frame)} usable rides, too few for a reference")
    if len(current.frame) < args.min_rides:
        summary["status"] = "not_enough_data"
        print(f"not enough data: {len(current.frame)} rides in the window (minimum {args.min_rides}); no drift decision")
        print(json.dumps(summary))
        return summary

    columns = drift.columns_for(reference.frame, current.frame)
    cache = args.calibration_cache or (storage.join(args.report_uri, "calibration") if args.report_uri else None)
    detector = drift.Calibrated(
        reference.frame, columns, len(current.frame), args.false_alarm_rate, args.calibration_runs, cache_uri=cache
    )
    results = detector.test(current.frame)
    snapshot = drift.evidently_report(reference.frame, current.frame, columns)
    distances = drift.evidently_distances(snapshot)
    for r in results:
        r.distance, r.distance_method = distances.get(r.column, (None, None))
    summary["columns"] = drift.as_dict(results)
    summary["drift"] = any(r.drifted for r in results)
    summary["status"] = "drift" if summary["drift"] else "ok"

    if args.actuals:
        perf = performance(current.frame, load_actuals(args.actuals))
        perf["training_rmse"] = reference.training_rmse
        if reference.training_rmse is None and drift.PREDICTION in reference.frame and "duration" in reference.frame:
            errors = reference.frame[drift.PREDICTION] - reference.frame["duration"]
            perf["training_rmse"] = float((errors**2).mean() ** 0.5)
        if perf.get("rmse") is not None and perf["training_rmse"]:
            perf["rmse_ratio"] = perf["rmse"] / perf["training_rmse"]
        summary["performance"] = perf

    if args.report_uri:
        summary["report"] = write_report(args.report_uri, until, summary, snapshot, reference.frame, current.frame)
    print_table(summary)
    if args.log_to_mlflow:
        log_to_mlflow(args.tracking_uri, summary)
    if summary["drift"] and os.environ.get("ALERT_WEBHOOK_URL"):
        send_alert(os.environ["ALERT_WEBHOOK_URL"], summary)
    print(json.dumps(summary))
    return summary


def write_report(base: str, until: datetime, summary: dict, snapshot, reference, current) -> str:
    from monitoring import drift, storage

    folder = storage.join(base, "reports", f"dt={until.strftime('%Y-%m-%dT%H%M%SZ')}")
    summary = {**summary, "report": folder}
    storage.write_bytes(storage.join(folder, "report.json"), snapshot.json().encode(), "application/json")
    html = Path(os.environ.get("TMPDIR", "/tmp")) / f"drift-report-{os.getpid()}.html"
    snapshot.save_html(str(html))
    storage.write_bytes(storage.join(folder, "report.html"), html.read_bytes(), "text/html")
    html.unlink()
    if drift.PREDICTION in reference and drift.PREDICTION in current:
        storage.write_bytes(storage.join(folder, "predictions.png"), drift.prediction_plot(reference, current), "image/png")
    storage.write_bytes(storage.join(folder, "summary.json"), json.dumps(summary, indent=2).encode(), "application/json")
    return folder


def print_table(summary: dict) -> None:
    print(f"model version {summary['model_version'] or '-'}: {summary['n_current']:,} rides in the window vs "
          f"{summary['n_reference']:,} reference rides")  # fmt: skip
    print(f"{'feature':<14} {'test':<5} {'p-value':>10} {'threshold':>10} {'distance':>9}  drifted")
    for column, r in summary["columns"].items():
        distance = "-" if r["distance"] is None else f"{r['distance']:.3f}"
        print(f"{column:<14} {r['test']:<5} {r['p_value']:>10.3g} {r['threshold']:>10.3g} {distance:>9}  "
              f"{'YES' if r['drifted'] else 'no'}")  # fmt: skip
    perf = summary.get("performance")
    if perf and perf.get("n_joined"):
        ratio = f" ({perf['rmse_ratio']:.2f}x training)" if perf.get("rmse_ratio") else ""
        print(f"performance on {perf['n_joined']:,} rides with actuals: RMSE {perf['rmse']:.2f}{ratio}, MAE {perf['mae']:.2f}")
    if summary["unreadable_objects"]:
        print(f"skipped {summary['unreadable_objects']} unreadable log object(s)")
    print(f"drift: {'YES' if summary['drift'] else 'no'}" + (f"; report: {summary['report']}" if summary["report"] else ""))


def log_to_mlflow(tracking_uri: str | None, summary: dict) -> None:
    import contextlib

    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        mlflow.set_experiment("trip-duration-monitoring")
        # MLflow prints run links on stdout, which is the table and the JSON line here.
        with contextlib.redirect_stdout(sys.stderr), mlflow.start_run(run_name=f"drift {summary['window']['until']}"):
            mlflow.set_tags({"model_version": summary["model_version"] or "", "status": summary["status"]})
            mlflow.log_metrics(
                {
                    "drift": float(summary["drift"]),
                    "n_current": summary["n_current"],
                    **{f"p_value_{c}": r["p_value"] for c, r in summary["columns"].items()},
                    **{f"distance_{c}": r["distance"] for c, r in summary["columns"].items() if r["distance"] is not None},
                    **({"rmse": summary["performance"]["rmse"]} if (summary["performance"] or {}).get("rmse") else {}),
                }
            )
            mlflow.log_dict(summary, "summary.json")
    except Exception as e:  # the decision is made and printed; losing the metrics is worth a warning
        log.warning("could not log to MLflow at %s: %s", tracking_uri, e)


def send_alert(url: str, summary: dict) -> None:
    import requests

    try:
        r = requests.post(url, json={"text": f"trip-duration: drift in model version {summary['model_version']}", **summary}, timeout=10)
        r.raise_for_status()
        log.info("alert sent to %s", url)
    except Exception as e:
        log.warning("could not deliver the drift alert to %s: %s", url, e)
