"""The training job: fit, evaluate, log to MLflow, register, and move the alias through the fair gate."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pandas as pd
import sklearn
from mlflow import MlflowClient
from mlflow.models import infer_signature

from ride import FEATURES, PREDICTION, TARGET
from ride.registry import REFERENCE_ARTIFACT
from training import model as model_lib
from training.data import Month, load_month, load_production
from training.registry import fair_gate, record_decision, storage_uri
from training.settings import TrainSettings

log = logging.getLogger("training")


def load(settings: TrainSettings) -> tuple[Month, Month]:
    """The rides to fit on and to validate on: two months, or the production rides of a window split by time."""
    if settings.production_rides:
        log.info("loading production rides %s with actuals %s", settings.production_rides, settings.actuals)
        return load_production(settings.production_rides, settings.actuals, settings.since, settings.until,
                               settings.validation_share)  # fmt: skip
    log.info("loading training data %s", settings.train_data)
    train = load_month(settings.train_data, settings.data_dir, settings.data_cache_dir)
    log.info("loading validation data %s", settings.val_data)
    return train, load_month(settings.val_data, settings.data_dir, settings.data_cache_dir)


def pip_requirements() -> list[str]:
    import cloudpickle
    import numpy
    import scipy

    return [
        f"scikit-learn=={sklearn.__version__}",
        f"numpy=={numpy.__version__}",
        f"scipy=={scipy.__version__}",
        f"pandas=={pd.__version__}",
        f"cloudpickle=={cloudpickle.__version__}",
    ]


def data_params(prefix: str, month: Month) -> dict:
    return {
        f"{prefix}_data": month.source,
        f"{prefix}_sha256": month.sha256,
        f"{prefix}_rows": month.rows,
        f"{prefix}_rows_used": month.rows_used,
    }


def run(settings: TrainSettings) -> dict:
    # Everything that can fail on the user's input fails here, before MLflow sees a run.
    train, val = load(settings)
    log.info("%d training rides, %d validation rides; the drift reference holds %d", train.rows_used, val.rows_used, len(val.serving))

    if settings.tracking_uri:
        mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_experiment(settings.experiment)
    client = MlflowClient()

    pipeline = model_lib.build_pipeline(**(settings.hyperparameters or {}))
    features = list(FEATURES)
    x_train, y_train = train.frame[features], train.frame[TARGET]
    x_val, y_val = val.frame[features], val.frame[TARGET]

    # MLflow prints run links on stdout, whose last line is the result JSON.
    with contextlib.redirect_stdout(sys.stderr), mlflow.start_run() as active:
        run_id = active.info.run_id
        mlflow.log_params(
            {
                "features": ",".join(FEATURES),
                "model": type(pipeline[-1]).__name__,
                **{k: v for k, v in pipeline[-1].get_params().items() if k != "categorical_features"},
                **data_params("train", train),
                **data_params("val", val),
                "reference_rows": len(val.serving),
            }
        )
        started = time.perf_counter()
        pipeline.fit(x_train, y_train)
        training_time = time.perf_counter() - started
        predictions = pipeline.predict(x_val)
        metrics = {
            "rmse": model_lib.rmse(y_val, predictions),
            "mae": model_lib.mae(y_val, predictions),
            "training_time_s": training_time,
        }
        mlflow.log_metrics(metrics)
        log.info("rmse %.3f, mae %.3f on %s (%.1fs to fit)", metrics["rmse"], metrics["mae"], val.source, training_time)

        # The drift reference is what the model will be served: every ride of the validation month it would
        # score, whatever the trip took, with its prediction and (for error metrics) its actual duration.
        reference = val.serving.assign(**{PREDICTION: pipeline.predict(val.serving[features])})
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(REFERENCE_ARTIFACT).name
            reference.to_parquet(path, index=False)
            mlflow.log_artifact(str(path), artifact_path=str(Path(REFERENCE_ARTIFACT).parent))

        # What MLflow writes to stderr meanwhile repeats our own lines ("Successfully registered model …") or is advice
        # for notebooks: pickle's caution (the sklearn runtime's format), an integer-schema hint, pip's version (the
        # images have no pip). Our log handler keeps its own stream; MLflow's errors still arrive as exceptions.
        with contextlib.redirect_stderr(io.StringIO()):
            info = mlflow.sklearn.log_model(
                sk_model=pipeline,
                name="model",
                # KServe's sklearn runtime loads one *.pkl with joblib; skops (MLflow's default) it cannot read.
                serialization_format="cloudpickle",
                signature=infer_signature(x_val.head(100), predictions[:100]),
                input_example=x_val.head(3),
                pip_requirements=pip_requirements(),
                registered_model_name=settings.model_name,
            )
        version = str(info.registered_model_version)

    gate = fair_gate(client, settings.model_name, settings.alias, metrics["rmse"], x_val, y_val, settings.gate_margin)
    client.set_model_version_tag(settings.model_name, version, "rmse", f"{metrics['rmse']:.4f}")
    record_decision(client, settings.model_name, settings.alias, version, run_id, gate)
    if gate.promote:
        log.info("version %s is now @%s: %s", version, settings.alias, gate.reason)
    else:
        log.warning("version %s NOT promoted to @%s: %s", version, settings.alias, gate.reason)

    return {
        "run_id": run_id,
        "version": version,
        "rmse": round(metrics["rmse"], 4),
        "mae": round(metrics["mae"], 4),
        "promoted": gate.promote,
        "reason": gate.reason,
        "champion": gate.champion,
        "champion_rmse": None if gate.champion_rmse is None else round(gate.champion_rmse, 4),
        "alias": settings.alias,
        "storage_uri": storage_uri(client, settings.model_name, version, settings.artifacts_destination),
    }
