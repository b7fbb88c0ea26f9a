"""What the drift job compares: the rides served in a window (prediction logs, or a table of rides) and the
reference of the model version that served them."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd

import ride
from ride import PREDICTION, RIDE_ID, TARGET, store
from ride.reader import read_actuals, read_predictions
from ride.registry import REFERENCE_ARTIFACT, REJECTED_TAG

MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))?/?$")


class InputError(Exception):
    """An input the user named cannot be used; the message says which and why."""


@dataclass
class Reference:
    frame: pd.DataFrame  # the serving population: features [+ prediction] [+ duration] [+ pickup_datetime]
    source: str
    model_version: str | None = None
    validation_rmse: float | None = None


@dataclass
class Current:
    frame: pd.DataFrame  # served rides: features [+ prediction, model_version, ride_id]
    source: str
    objects: int = 0
    unreadable: list[str] = field(default_factory=list)
    duplicates: int = 0

    def versions(self) -> list[str | None]:
        """Model versions in the window, the newest (last scored) first; [None] for a table of rides."""
        if "model_version" not in self.frame.columns:
            return [None]
        last = self.frame.groupby("model_version")["ts"].max().sort_values(ascending=False)
        return [str(v) for v in last.index]

    def of_version(self, version: str | None) -> pd.DataFrame:
        if version is None:
            return self.frame
        return self.frame[self.frame["model_version"] == version].reset_index(drop=True)


def read_table(src: str) -> pd.DataFrame:
    try:
        raw = store.read_bytes(src)
    except FileNotFoundError:
        raise InputError(f"{src}: file not found") from None
    except Exception as e:
        raise InputError(f"{src}: cannot read: {e}") from None
    try:
        return store.parse_table(src, raw)
    except ride.SourceError as e:
        raise InputError(str(e)) from None


def serving_rides(table: pd.DataFrame, src: str, keep: tuple[str, ...] = ()) -> pd.DataFrame:
    """The rides of a table the transformer would score (a TLC month is treated like any other table)."""
    try:
        return ride.serving_population(table, src, keep)
    except ride.SourceError as e:
        raise InputError(str(e)) from None


class ReferenceResolver:
    """`--reference`: a table of rides (one reference for every version), or a model in the registry (each logged
    version judged against its own reference: the validation rides it was trained with)."""

    def __init__(self, src: str, tracking_uri: str | None):
        self.src = src
        self.tracking_uri = tracking_uri
        self.model = MODEL_URI.match(src)
        self._cache: dict[str | None, Reference] = {}

    @property
    def model_name(self) -> str | None:
        return self.model["name"] if self.model else None

    @functools.cached_property
    def pinned_version(self) -> str | None:
        """The one version an alias or version URI names (its logs are judged, others are left out)."""
        if not self.model or not (self.model["alias"] or self.model["version"]):
            return None
        if self.model["version"]:
            return self.model["version"]
        client = self._client()
        try:
            return str(client.get_model_version_by_alias(self.model["name"], self.model["alias"]).version)
        except Exception as e:
            raise InputError(f"{self.src}: {_first_line(e)}") from None

    def rejected_at(self) -> str | None:
        """When training last turned a challenger down (the retraining cool-down starts then), if it ever did."""
        if not self.model:
            return None
        return self._client().get_registered_model(self.model["name"]).tags.get(REJECTED_TAG)

    def for_version(self, version: str | None) -> Reference:
        key = version if self.model else None  # a table is every version's reference: read and calibrated once
        if key not in self._cache:
            self._cache[key] = self._load(version)
        return self._cache[key]

    def _client(self):
        import mlflow
        from mlflow import MlflowClient

        if self.tracking_uri:
            mlflow.set_tracking_uri(self.tracking_uri)
        return MlflowClient()

    def _load(self, version: str | None) -> Reference:
        if not self.model:
            frame = serving_rides(read_table(self.src), self.src)
            scored = ride.learnable(frame) if PREDICTION in frame.columns else frame.iloc[0:0]
            rmse = float(np.sqrt(np.mean((scored[PREDICTION] - scored[TARGET]) ** 2))) if len(scored) else None
            return Reference(frame, self.src, validation_rmse=rmse)
        import mlflow
        from mlflow.exceptions import MlflowException

        name = self.model["name"]
        version = self.model["version"] or version or self.pinned_version
        if version is None:
            raise InputError(f"{self.src}: name a version or alias, or give prediction logs that carry model_version")
        client = self._client()
        try:
            mv = client.get_model_version(name, version)
            rmse = client.get_run(mv.run_id).data.metrics.get("rmse")
            local = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=REFERENCE_ARTIFACT)
        except MlflowException as e:
            raise InputError(f"{self.src} (version {version}): {_first_line(e)}") from None
        except OSError as e:
            raise InputError(f"{self.src} (version {version}): cannot download the reference artifact: {e}") from None
        frame = serving_rides(pd.read_parquet(local), f"{self.src} version {version}")
        return Reference(frame, f"models:/{name}/{mv.version} (run {mv.run_id})", str(mv.version), rmse)


def _first_line(e: Exception) -> str:
    return (getattr(e, "message", None) or str(e)).splitlines()[0]


def load_logs(prefix: str, since: datetime, until: datetime) -> Current:
    try:
        records = read_predictions(prefix, since, until)
    except FileNotFoundError as e:
        raise InputError(str(e)) from None
    except Exception as e:
        raise InputError(f"{prefix}: cannot read prediction logs: {e}") from None
    rides = serving_rides(records.frame, prefix, keep=("model_version", "ts"))
    return Current(rides, prefix, records.objects, records.unreadable, records.duplicates)


def load_current(src: str, since: datetime, until: datetime) -> Current:
    if is_table(src):
        return Current(serving_rides(read_table(src), src), src)
    return load_logs(src, since, until)


@dataclass
class Actuals:
    frame: pd.DataFrame  # ride_id (str), duration (minutes), one row per ride
    source: str
    unreadable: list[str] = field(default_factory=list)


def is_table(src: str) -> bool:
    return src.lower().endswith((".parquet", ".csv", ".csv.gz"))


def load_actuals(src: str, since: datetime) -> Actuals:
    """Actual durations: an actuals prefix (what arrived since the window opened, late ones included) or a table."""
    if not is_table(src):
        try:
            records = read_actuals(src, since)
        except FileNotFoundError as e:
            raise InputError(str(e)) from None
        except Exception as e:
            raise InputError(f"{src}: cannot read actuals: {e}") from None
        frame = records.frame[[RIDE_ID, TARGET]].assign(**{RIDE_ID: lambda d: d[RIDE_ID].astype(str)})
        return Actuals(frame, src, records.unreadable)
    table = read_table(src)
    if RIDE_ID not in table.columns:
        raise InputError(f"{src}: actuals need a ride_id column (and duration, or TLC pick-up/drop-off times)")
    if TARGET not in table.columns:
        table = serving_rides(table, src)
        if TARGET not in table.columns:
            raise InputError(f"{src}: actuals need a duration column, or TLC pick-up and drop-off times")
    out = table[[RIDE_ID, TARGET]].dropna()
    out[RIDE_ID] = out[RIDE_ID].astype(str)
    return Actuals(out.drop_duplicates(RIDE_ID, keep="last"), src)


def live_actuals(rides: pd.DataFrame, actuals: pd.DataFrame) -> tuple[pd.Series, int]:
    """Each window ride's actual duration where it is known and one training learns from (1-60 min), else NaN;
    and how many rides had an actual at all."""
    known = rides[RIDE_ID].astype(str).map(actuals.set_index(RIDE_ID)[TARGET])
    learnable = known.between(ride.MIN_DURATION, ride.MAX_DURATION)
    return known.where(learnable), int(known.notna().sum())


def live_error(rides: pd.DataFrame, actual: pd.Series, n_with_actuals: int, validation_rmse: float | None,
               max_ratio: float, min_rides: int) -> dict:  # fmt: skip
    """RMSE and MAE of the logged predictions on rides with an actual duration of 1-60 min, against the version's
    validation RMSE; `degraded` when the ratio is above `max_ratio` on at least `min_rides` such rides."""
    error = (rides[PREDICTION] - actual).dropna()
    out = {"n_with_actuals": n_with_actuals, "n_joined": int(len(error)), "validation_rmse": validation_rmse,
           "max_rmse_ratio": max_ratio, "min_rides": min_rides, "degraded": None}  # fmt: skip
    if error.empty:
        return out
    out.update(rmse=float(np.sqrt(np.mean(error**2))), mae=float(np.mean(np.abs(error))))
    if validation_rmse:
        out["rmse_ratio"] = out["rmse"] / validation_rmse
        if len(error) >= min_rides:
            out["degraded"] = out["rmse_ratio"] > max_ratio
    return out
