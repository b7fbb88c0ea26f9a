"""The drift job: judge each model version's rides in the window against that version's reference, watch its live
error against the actuals, and start a retraining Job when the version serving now needs one."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from datetime import datetime, timezone

import pandas as pd

from monitoring import drift, retrain
from monitoring.settings import Settings
from monitoring.inputs import Reference, ReferenceResolver, live_actuals, live_error, load_actuals, load_current
from ride import PREDICTION, RIDE_ID, store

log = logging.getLogger("monitoring")
MLFLOW_EXPERIMENT = "trip-duration-monitoring"


class UsageError(Exception):
    pass


def run(settings: Settings) -> dict:
    until = settings.until or datetime.now(timezone.utc)
    since = settings.since or until - settings.window
    if since >= until:
        raise UsageError(f"empty window: --since {since.isoformat()} is not before --until {until.isoformat()}")

    current = load_current(settings.current, since, until)
    for problem in current.unreadable:
        log.warning("skipped unreadable log object %s", problem)
    actuals = load_actuals(settings.actuals, since) if settings.actuals else None
    for problem in actuals.unreadable if actuals else []:
        log.warning("skipped unreadable actuals object %s", problem)
    resolver = ReferenceResolver(settings.reference, settings.tracking_uri)
    wanted = settings.model_version or resolver.pinned_version
    cache = settings.calibration_cache or (store.join(settings.report_uri, "calibration") if settings.report_uri else None)

    versions, left_out = [], {}
    for version in current.versions():
        rides = current.of_version(version)
        if wanted is not None and version is not None and version != wanted:
            left_out[version] = {"rides": len(rides), "why": f"not version {wanted}"}
        elif len(rides) < settings.min_rides:
            left_out[version or "-"] = {"rides": len(rides), "why": f"fewer than --min-rides {settings.min_rides}"}
        else:
            versions.append(judge(version, rides, resolver.for_version(version), actuals, settings, cache))

    public = [{k: v for k, v in judged.items() if k != "frames"} for judged in versions]
    drifted = any(v["drift"] for v in public)
    degraded = any((v["performance"] or {}).get("degraded") for v in public)
    summary = {
        # The newest judged version's results at the top (the one serving now), every judged version in "versions".
        **(public[0] if public else {"model_version": wanted, "n_reference": None, "n_current": len(current.frame),
                                     "columns": {}, "performance": None}),
        "drift": drifted,
        "degraded": degraded,
        "status": "not_enough_data" if not versions else "drift" if drifted else "degraded" if degraded else "ok",
        "current": current.source,
        "actuals": actuals.source if actuals else None,
        "window": {"since": since.isoformat(), "until": until.isoformat()},
        "log_objects": current.objects,
        "unreadable_objects": len(current.unreadable),
        "unreadable_actuals": len(actuals.unreadable) if actuals else 0,
        "duplicates_removed": current.duplicates,
        "left_out": left_out,
        "versions": public,
        "report": None,
    }  # fmt: skip
    summary["retrain"] = retrain.trigger(public[0] if public else None, settings, resolver.rejected_at)
    if not versions:
        print(f"not enough data: {len(current.frame)} rides in the window"
              + ("".join(f"; version {v}: {x['rides']} ({x['why']})" for v, x in left_out.items()))
              + "; no drift decision")  # fmt: skip
        print(json.dumps(summary, default=str))
        return summary

    if settings.report_uri:
        summary["report"] = write_reports(settings.report_uri, until, summary, versions)
    print_table(summary, versions)
    if settings.log_to_mlflow:
        log_to_mlflow(settings.tracking_uri, summary, store.join(settings.report_uri, "mlflow") if settings.report_uri else None)
    if (drifted or degraded) and settings.alert_webhook_url:
        send_alert(settings.alert_webhook_url, summary)
    print(json.dumps(summary, default=str))
    return summary


def judge(version: str | None, rides: pd.DataFrame, reference: Reference, actuals, settings, cache: str | None) -> dict:
    if len(reference.frame) < 3 * settings.min_rides:
        raise UsageError(f"{reference.source}: only {len(reference.frame)} usable rides, too few for a reference")
    columns = drift.columns_for(reference.frame, rides)
    test = drift.DriftTest(reference.frame, columns, len(rides), settings.false_alarm_rate, settings.calibration_windows, cache)
    results = test.test(rides)
    actual, perf = None, None
    if actuals is not None and RIDE_ID in rides.columns and PREDICTION in rides.columns:
        actual, with_actuals = live_actuals(rides, actuals.frame)
        perf = live_error(rides, actual, with_actuals, reference.validation_rmse, settings.max_rmse_ratio, settings.min_actuals)
    return {
        "model_version": version,
        "drift": any(r.drifted for r in results),
        "n_reference": len(reference.frame),
        "n_current": len(rides),
        "n_judged": min(len(rides), test.window_size),
        "reference": reference.source,
        "columns": drift.as_dict(results),
        "calibration": {k: v for k, v in vars(test.calibration).items() if k != "thresholds"},
        "performance": perf,
        "frames": (reference.frame, rides, test, actual),
    }


def write_reports(base: str, until: datetime, summary: dict, versions: list[dict]) -> str:
    folder = store.join(base, "reports", f"dt={until.strftime('%Y-%m-%dT%H%M%SZ')}")
    for judged, entry in zip(versions, summary["versions"]):
        reference, rides, test, actual = judged["frames"]
        where = folder if len(versions) == 1 else store.join(folder, f"version={judged['model_version']}")
        snapshot = drift.evidently_report(reference, rides, test, actual, entry["performance"])
        store.write_bytes(store.join(where, "report.json"), snapshot.json().encode())
        store.write_bytes(store.join(where, "report.html"), snapshot.get_html_str(as_iframe=False).encode())
        if PREDICTION in reference and PREDICTION in rides:
            store.write_bytes(store.join(where, "predictions.png"), drift.prediction_plot(reference, rides))
        entry["report_html"] = store.join(where, "report.html")
        ours = {c: r["drifted"] for c, r in entry["columns"].items()}
        if (entry["performance"] or {}).get("degraded") is not None:
            ours["live_error_degraded"] = entry["performance"]["degraded"]
        entry["report_agrees"] = drift.report_verdicts(snapshot) == ours
    summary.update({k: summary["versions"][0][k] for k in ("report_html", "report_agrees")})
    body = json.dumps({**summary, "report": folder}, indent=2, default=str).encode()
    store.write_bytes(store.join(folder, "summary.json"), body)
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
        print(live_error_line(judged.get("performance")))
    for version, why in summary["left_out"].items():
        print(f"left out: version {version}, {why['rides']:,} rides ({why['why']})")
    for what, n in (("log", summary["unreadable_objects"]), ("actuals", summary["unreadable_actuals"])):
        if n:
            print(f"skipped {n} unreadable {what} object(s)")
    print(f"retrain: {'yes' if summary['retrain']['wanted'] else 'no'} ({summary['retrain']['reason']})"
          + (f"; started job {summary['retrain']['job']}" if summary["retrain"]["job"] else ""))  # fmt: skip
    print(f"drift: {'YES' if summary['drift'] else 'no'}; live error degraded: {'YES' if summary['degraded'] else 'no'}"
          + (f"; report: {summary['report']}" if summary["report"] else ""))  # fmt: skip


def live_error_line(perf: dict | None) -> str:
    if perf is None:
        return "live error: no actuals given (--actuals)"
    if perf.get("rmse") is None:
        return f"live error: no ride in the window has an actual duration of 1-60 min ({perf['n_with_actuals']} with actuals)"
    ratio = f" = {perf['rmse_ratio']:.2f}x validation {perf['validation_rmse']:.2f}" if perf.get("rmse_ratio") else ""
    verdict = ("not judged: fewer than --min-actuals " + str(perf["min_rides"]) if perf["degraded"] is None
               else f"{'DEGRADED' if perf['degraded'] else 'ok'} (limit {perf['max_rmse_ratio']:g}x)")  # fmt: skip
    return (f"live error on {perf['n_joined']:,} rides with actual durations of 1-60 min (of {perf['n_with_actuals']:,} "
            f"with actuals): RMSE {perf['rmse']:.2f}{ratio}, MAE {perf['mae']:.2f}: {verdict}")  # fmt: skip


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
                serving = judged is summary["versions"][0]
                retrain_tags = {f"retrain.{k}": str(v) for k, v in summary["retrain"].items()} if serving else {}
                mlflow.set_tags({"model_version": judged["model_version"] or "", "status": summary["status"], **retrain_tags})
                perf = judged["performance"] or {}
                mlflow.log_metrics(
                    {
                        "drift": float(judged["drift"]),
                        "n_current": judged["n_current"],
                        **{f"p_value_{c}": r["p_value"] for c, r in judged["columns"].items()},
                        **{f"threshold_{c}": r["threshold"] for c, r in judged["columns"].items()},
                        **{k: float(perf[k]) for k in ("rmse", "mae", "rmse_ratio", "n_joined") if perf.get(k) is not None},
                        **({"degraded": float(perf["degraded"])} if perf.get("degraded") is not None else {}),
                    }
                )
                mlflow.log_dict(summary, "summary.json")
    except Exception as e:  # the decision is made and printed; losing the metrics is worth a warning
        log.warning("could not log to MLflow at %s: %s", tracking_uri, e)


def send_alert(url: str, summary: dict) -> None:
    import requests

    flagged = [f"version {v['model_version']}: " + ", ".join(
        w for w, f in (("drift", v["drift"]), ("live error degraded", (v["performance"] or {}).get("degraded"))) if f)
        for v in summary["versions"] if v["drift"] or (v["performance"] or {}).get("degraded")]  # fmt: skip
    try:
        r = requests.post(url, data=json.dumps({"text": f"trip-duration: {'; '.join(flagged)}", **summary}, default=str),
                          headers={"Content-Type": "application/json"}, timeout=10)  # fmt: skip
        r.raise_for_status()
        log.info("alert sent to %s", url)
    except Exception as e:
        log.warning("could not deliver the alert to %s: %s", url, e)
