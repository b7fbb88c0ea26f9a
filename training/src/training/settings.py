"""Every setting of `python -m training`: its flag, its environment variable where it has one, its default.

One class per kind of command; each command's --help is generated from its class.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from ride.registry import MODEL_NAME, STAGING, VALIDATION_SHARE
from ride.settings import duration, setting, timestamp
from ride.tlc import CACHE_DIR


@dataclass
class RegistrySettings:
    """Where the model is registered (every command)."""

    tracking_uri: str | None = setting("MLflow tracking server", env="MLFLOW_TRACKING_URI")
    model_name: str = setting("registered model name", MODEL_NAME)
    alias: str = setting("the alias served, moved by the gate and by rollback", STAGING, aliases=("--stage-name",))
    artifacts_destination: str | None = setting(
        "when the server proxies artifacts (mlflow-artifacts:/…): its --artifacts-destination, e.g. s3://mlflow, to map "
        "model URIs to S3", env="MLFLOW_ARTIFACTS_DESTINATION")  # fmt: skip


@dataclass
class TrainSettings(RegistrySettings):
    train_data: str | None = setting("month (or file) to fit on", metavar="SRC")
    val_data: str | None = setting("month (or file) to validate on, never fitted", metavar="SRC")
    production_rides: str | None = setting("prediction logs (s3://predictions/logs or a directory): the rides served",
                                           metavar="PREFIX")  # fmt: skip
    actuals: str | None = setting("their actual durations (s3://actuals/rides or a directory)", metavar="PREFIX")
    window: timedelta = setting("production rides: how far back from --until", "7d", type=duration)
    since: datetime | None = setting("production rides: window start (ISO-8601, UTC); overrides --window", type=timestamp)
    until: datetime | None = setting("production rides: window end (ISO-8601, UTC; none: now)", type=timestamp)
    validation_share: float = setting("production rides: the newest part of the window (by time) that validates",
                                      VALIDATION_SHARE, type=float)  # fmt: skip
    experiment: str = setting("MLflow experiment", "nyc-taxi-experiment")
    gate_margin: float = setting(
        "promote only when RMSE is at most (1 - margin) x the alias holder's on the same validation rides; "
        "negative lets a worse model through", 0.01, type=float)  # fmt: skip
    data_dir: str | None = setting("where local copies of TLC months are (green_tripdata_YYYY-MM.parquet)", env="DATA_DIR")
    data_cache_dir: str = setting("where downloads are cached, by URL", CACHE_DIR, env="DATA_CACHE_DIR")
    hyperparameters: dict | None = None  # for tests and notebooks; not a flag


@dataclass
class IsvcSettings(RegistrySettings):
    """The InferenceService: the model from the registry (or given), the rest from the Job's environment."""

    storage_uri: str | None = setting("the model's s3:// directory (none: resolved from the alias)")
    model_version: str | None = setting("its registry version (with --storage-uri)")
    name: str = setting("InferenceService name", "trip-duration", env="ISVC_NAME")
    namespace: str = setting("its namespace", "taxi-mlops", env="POD_NAMESPACE")
    transformer_image: str | None = setting("the tagged transformer image", env="TRANSFORMER_IMAGE")
    service_account: str = setting("the predictor's ServiceAccount, carrying its S3 Secret", "kserve-s3",
                                   env="PREDICTOR_SERVICE_ACCOUNT")  # fmt: skip
    transformer_secret: str = setting("the transformer's S3 Secret", "s3-transformer", env="TRANSFORMER_S3_SECRET")
    s3_endpoint: str = setting("S3 as the transformer reaches it", "http://minio:9000", env="S3_ENDPOINT_URL")
    prediction_log_uri: str = setting("where the transformer logs", "s3://predictions/logs", env="PREDICTION_LOG_URI")
    timeout: float = setting("deploy: seconds to wait for the rollout", 600.0, type=float)
    poll: float = setting("deploy: seconds between looks at the rollout", 5.0, type=float)
