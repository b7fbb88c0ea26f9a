"""Every setting of the drift job: its flag, its environment variable where it has one, its default."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from ride.settings import duration, setting, timestamp


@dataclass
class Settings:
    reference: str = setting(
        "models:/NAME (each logged version against its own reference), models:/NAME@ALIAS or models:/NAME/VERSION "
        "(that version's logs only), or a parquet/csv of rides (a TLC month works); local path or s3://",
        required=True, metavar="SRC")  # fmt: skip
    current: str = setting("a prediction-log prefix (s3://predictions/logs or a directory) or a parquet/csv of rides",
                           required=True, metavar="SRC")  # fmt: skip
    window: timedelta = setting("how far back from --until", "24h", type=duration)
    since: datetime | None = setting("window start (ISO-8601, UTC); overrides --window", type=timestamp)
    until: datetime | None = setting("window end (ISO-8601, UTC; none: now)", type=timestamp)
    model_version: str | None = setting("judge the logs of this model version only (none: every version in the window)")
    actuals: str | None = setting(
        "actual durations, for live RMSE/MAE: an actuals prefix (s3://actuals/rides or a directory; what arrived "
        "since the window opened) or a parquet/csv with ride_id and duration", metavar="SRC")  # fmt: skip
    max_rmse_ratio: float = setting("live RMSE over the version's validation RMSE above which live error is degraded",
                                    1.2, type=float)  # fmt: skip
    min_actuals: int = setting("rides with an actual duration of 1-60 min needed to judge live error", 200, type=int)
    min_rides: int = setting("a version with fewer rides in the window is not judged", 200, type=int)
    false_alarm_rate: float = setting("on windows like the reference's: the calibrated thresholds' rate of false alarms",
                                      0.005, type=float)  # fmt: skip
    calibration_windows: int = setting("contiguous windows of the reference the thresholds rest on", 100, type=int)
    calibration_cache: str | None = setting("where calibrations are kept (none: <report-uri>/calibration, if given)")
    report_uri: str | None = setting("s3://… or a directory: reports/dt=<window end>/ gets summary.json, HTML, JSON, PNG")
    tracking_uri: str | None = setting("MLflow server, for models:/ references and the drift metrics",
                                       env="MLFLOW_TRACKING_URI")  # fmt: skip
    log_to_mlflow: bool = setting("log metrics and report to the experiment trip-duration-monitoring", False,
                                  action="store_true")  # fmt: skip
    alert_webhook_url: str | None = setting("POSTed the summary when drift or degradation is found", env="ALERT_WEBHOOK_URL")
    retrain_cronjob: str | None = setting(
        "on drift or degradation of the serving version, start a Job from this suspended CronJob (one at a time; "
        "not during --retrain-cooldown after a rejected challenger), with the pod's service account", metavar="NAME")  # fmt: skip
    retrain_cooldown: timedelta = setting("no retraining this long after the gate rejected a challenger", "24h",
                                          type=duration)  # fmt: skip
    fail_on_drift: bool = setting("exit 1 when drift is found (for alerting CronJobs)", False, action="store_true")
    fail_on_degradation: bool = setting("exit 3 when live error is degraded", False, action="store_true")
