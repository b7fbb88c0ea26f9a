"""The drift job: judge each model version's rides in the window against that version's reference."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from monitoring import drift, storage
from monitoring.inputs import Reference, ReferenceResolver, load_actuals, load_current, performance
from ride import PREDICTION

log = logging.getLogger("monitoring")
MLFLOW_EXPERIMENT = "trip-duration-monitoring"


class UsageError(Exception):
    pass


def run(args) -> dict:
    until = args.until or datetime.now(timezone.utc)
    since = args.since or until - args.window
    if since >= until:
        raise UsageError(f"empty window: --since {since.isoformat()} is not before --until {until.isoformat()}")

    current = load_current(args.current, since, until)
    for problem in current.unreadable:
        log.warning("skipped unreadable log object %s", problem)
    resolver = ReferenceResolver(args.reference, args.tracking_uri)
    wanted = args.model_version or resolver.pinned_version
    actuals = load_actuals(args.actuals) if args.actuals else None
    cache = args.calibration_cache or (storage.join(args.report_uri, "calibration") if args.report_uri else None)

    versions, left_out = [], {}
    for version in current.versions():
        rides = current.of_version(version)
        if wanted is not None and version is not None and version != wanted:
            left_out[version] = {"rides": len(rides), "why": f"not version {wanted}"}
        elif len(rides) < args.min_rides:
            left_out[version or "-"] = {"rides": len(rides), "why": f"fewer than --min-rides {args.min_rides}"}
        else:
            versions.append(judge(version, rides, resolver.for_version(version), actuals, args, cache))

    public = [{k: v for k, v in judged.items() if k != "frames"} for judged in versions]
    drifted = any(v["drift"] for v in versions)
    summary = {
        # The newest judged version's results at the top, every judged version under "versions".
        **(public[0] if public else {"model_version": wanted, "n_reference": None, "n_current": len(current.frame),
                                     "columns": {}, "performance": None}),
        "drift": drifted,
        "status": "not_enough_data" if not versions else "drift" if drifted else "ok",
        "current": current.source,
        "window": {"since": since.isoformat(), "until": until.isoformat()},
        "log_objects": current.objects,
        "unreadable_objects": len(current.unreadable),
        "duplicates_removed": current.duplicates,
        "left_out": left_out,
        "versions": public,
        "report": None,
    }  # fmt: skip
    if not versions:
        print(f"not enough data: {len(current.frame)} rides in the window"
              + ("".join(f"; version {v}: {x['rides']} ({x['why']})" for v, x in left_out.items()))
              + "; no drift decision")  # fmt: skip
        print(json.dumps(summary, default=str))
        return summary

    if args.report_uri:
        summary["report"] = write_reports(args.report_uri, until, summary, versions)
    print_table(summary, versions)
    if args.log_to_mlflow:
        log_to_mlflow(args.tracking_uri, summary, storage.join(args.report_uri, "mlflow") if args.report_uri else None)
    if summary["drift"] and os.environ.get("ALERT_WEBHOOK_URL"):
        send_alert(os.environ["ALERT_WEBHOOK_URL"], summary)
    print(json.dumps(summary, default=str))
    return summary


def judge(version: str | None, rides: pd.DataFrame, reference: Reference, actuals, args, cache: str | None) -> dict:
    if len(reference.frame) < 3 * args.min_rides:
        raise UsageError(f"{reference.source}: only {len(reference.frame)} usable rides, too few for a reference")
    columns = drift.columns_for(reference.frame, rides)
    test = drift.DriftTest(reference.frame, columns, len(rides), args.false_alarm_rate, args.calibration_windows, cache)
    results = test.test(rides)
    judged = {
        "model_version": version,
        "drift": any(r.drifted for r in results),
        "n_reference": len(reference.frame),
        "n_current": len(rides),
        "n_judged": min(len(rides), test.window_size),
        "reference": reference.source,
        "columns": drift.as_dict(results),
        "calibration": {k: v for k, v in vars(test.calibration).items() if k != "thresholds"},
        "performance": None,
        "frames": (reference.frame, rides, test),
    }
    if actuals is not None and "ride_id" in rides.columns:
        perf = performance(rides, actuals)
        perf["validation_rmse"] = reference.validation_rmse
        if perf.get("rmse") is not None and reference.validation_rmse:
            perf["rmse_ratio"] = perf["rmse"] / reference.validation_rmse
        judged["performance"] = perf
    return judged


def write_reports(base: str, until: datetime, summary: dict, versions: list[dict]) -> str:
    folder = storage.join(base, "reports", f"dt={until.strftime('%Y-%m-%dT%H%M%SZ')}")
    for judged, entry in zip(versions, summary["versions"]):
        reference, rides, test = judged["frames"]
        where = folder if len(versions) == 1 else storage.join(folder, f"version={judged['model_version']}")
        snapshot = drift.evidently_report(reference, rides, test)
        storage.write_bytes(storage.join(where, "report.json"), snapshot.json().encode(), "application/json")
        html = Path(os.environ.get("TMPDIR", "/tmp")) / f"drift-report-{os.getpid()}.html"
        snapshot.save_html(str(html))
        storage.write_bytes(storage.join(where, "report.html"), html.read_bytes(), "text/html")
        html.unlink()
        if PREDICTION in reference and PREDICTION in rides:
            storage.write_bytes(storage.join(where, "predictions.png"), drift.prediction_plot(reference, rides), "image/png")
        entry["report_html"] = storage.join(where, "report.html")
        entry["report_agrees"] = drift.report_verdicts(snapshot) == {c: r["drifted"] for c, r in entry["columns"].items()}
    summary.update({k: summary["versions"][0][k] for k in ("report_html", "report_agrees")})
    body = json.dumps({**summary, "report": folder}, indent=2, default=str).encode()
    storage.write_bytes(storage.join(folder, "summary.json"), body, "application/json")
    return folder


def print_table(summary: dict, versions: list[dict]) -> None:
    for judged in versions:
        cal = judged["calibration"]
        print(f"model version {judged['model_version'] or '-'}: {judged['n_current']:,} rides in the window vs "
              f"{judged['n_reference']:,} reference rides ({judged['reference']})")  # fmt: skip
        if judged["n_judged"] < judged["n_current"]:
            print(f"judged on an even sample of {judged['n_judged']:,} rides, the calibrated window size")
        print(f"thresholds from {cal['windows']} contiguous windows of {cal['window_size']:,} reference rides "
              f"(by {cal['ordered_by']}); such windows with 20% longer trips are flagged "
              f"{cal['power']['longer_trips']:.0%} of the time, with 20% of pick-ups moved {cal['power']['moved_zones']:.0%}")  # fmt: skip
        print(f"{'feature':<14} {'test':<5} {'p-value':>10} {'threshold':>10}  drifted")
        for column, r in judged["columns"].items():
            print(f"{column:<14} {r['test']:<5} {r['p_value']:>10.3g} {r['threshold']:>10.3g}  {'YES' if r['drifted'] else 'no'}")
        perf = judged.get("performance")
        if perf and perf.get("rmse") is not None:
            ratio = f" ({perf['rmse_ratio']:.2f}x validation {perf['validation_rmse']:.2f})" if perf.get("rmse_ratio") else ""
            print(f"live error on {perf['n_joined']:,} rides with actual durations of 1-60 min (of {perf['n_with_actuals']:,} "
                  f"with actuals): RMSE {perf['rmse']:.2f}{ratio}, MAE {perf['mae']:.2f}")  # fmt: skip
        elif perf:
            print(f"live error: no ride in the window has an actual duration of 1-60 min ({perf['n_with_actuals']} with actuals)")
    for version, why in summary["left_out"].items():
        print(f"left out: version {version}, {why['rides']:,} rides ({why['why']})")
    if summary["unreadable_objects"]:
        print(f"skipped {summary['unreadable_objects']} unreadable log object(s)")
    print(f"drift: {'YES' if summary['drift'] else 'no'}" + (f"; report: {summary['report']}" if summary["report"] else ""))


def log_to_mlflow(tracking_uri: str | None, summary: dict, artifact_location: str | None) -> None:
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    try:
        # The experiment keeps its artifacts next to the reports: the drift job may write there, not where models are.
        if artifact_location and mlflow.get_experiment_by_name(MLFLOW_EXPERIMENT) is None:
            mlflow.create_experiment(MLFLOW_EXPERIMENT, artifact_location=artifact_location)
        mlflow.set_experiment(MLFLOW_EXPERIMENT)
        for judged in summary["versions"]:
            # MLflow prints run links on stdout, which is the table and the JSON line here.
            with contextlib.redirect_stdout(sys.stderr), mlflow.start_run(run_name=f"drift {summary['window']['until']}"):
                mlflow.set_tags({"model_version": judged["model_version"] or "", "status": summary["status"]})
                perf = judged["performance"] or {}
                mlflow.log_metrics(
                    {
                        "drift": float(judged["drift"]),
                        "n_current": judged["n_current"],
                        **{f"p_value_{c}": r["p_value"] for c, r in judged["columns"].items()},
                        **{f"threshold_{c}": r["threshold"] for c, r in judged["columns"].items()},
                        **({"rmse": perf["rmse"]} if perf.get("rmse") is not None else {}),
                    }
                )
                mlflow.log_dict(summary, "summary.json")
    except Exception as e:  # the decision is made and printed; losing the metrics is worth a warning
        log.warning("could not log to MLflow at %s: %s", tracking_uri, e)


def send_alert(url: str, summary: dict) -> None:
    import requests

    drifted = [v["model_version"] for v in summary["versions"] if v["drift"]]
    try:
        text = f"trip-duration: drift in model version {', '.join(str(v) for v in drifted)}"
        r = requests.post(url, data=json.dumps({"text": text, **summary}, default=str),
                          headers={"Content-Type": "application/json"}, timeout=10)  # fmt: skip
        r.raise_for_status()
        log.info("alert sent to %s", url)
    except Exception as e:
        log.warning("could not deliver the drift alert to %s: %s", url, e)

