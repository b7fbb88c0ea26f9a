import numpy as np
import pandas as pd
import pytest

from training.data import DataError, prepare
from training.model import build_pipeline
from training.registry import to_storage_uri


def rides(**columns):
    start = pd.Timestamp("2030-01-01 10:00")
    n = len(next(iter(columns.values())))
    base = {
        "lpep_pickup_datetime": [start] * n,
        "lpep_dropoff_datetime": [start + pd.Timedelta(minutes=10)] * n,
        "PULocationID": [10] * n,
        "DOLocationID": [20] * n,
        "trip_distance": [2.0] * n,
    }
    return pd.DataFrame({**base, **columns})


def test_prepare_keeps_workshop_range_and_valid_features():
    start = pd.Timestamp("2030-01-01 10:00")
    df = rides(
        lpep_dropoff_datetime=[start + pd.Timedelta(minutes=m) for m in (0.5, 1, 30, 60, 61, 10, 10, 10, 10)],
        PULocationID=[1, 1, 1, 1, 1, 0, 266, 5, 5],
        trip_distance=[1, 1, 1, 1, 1, 1, 1, -1, np.nan],
    )
    serving, out = prepare(df)
    assert out["duration"].tolist() == [1.0, 30.0, 60.0]
    assert serving["duration"].tolist() == [0.5, 1.0, 30.0, 60.0, 61.0]  # what the model is served: any duration
    assert out.dtypes.to_dict() == {
        "PULocationID": np.dtype("int64"),
        "DOLocationID": np.dtype("int64"),
        "trip_distance": np.dtype("float64"),
        "pickup_datetime": np.dtype("datetime64[ns]"),
        "duration": np.dtype("float64"),
    }


def test_prepare_names_missing_columns():
    with pytest.raises(DataError, match="month.parquet: missing columns DOLocationID"):
        prepare(rides(PULocationID=[1]).drop(columns=["DOLocationID"]), "month.parquet")


def test_yellow_taxi_columns_are_accepted():
    df = rides(PULocationID=[1]).rename(columns=lambda c: c.replace("lpep", "tpep"))
    assert len(prepare(df)[1]) == 1


def test_unknown_zones_predict_without_error():
    rng = np.random.default_rng(0)
    x = pd.DataFrame(
        {"PULocationID": rng.integers(1, 20, 500), "DOLocationID": rng.integers(1, 20, 500), "trip_distance": rng.uniform(0, 10, 500)}
    )
    model = build_pipeline(max_iter=20).fit(x, 3 * x["trip_distance"] + 2)
    unseen = pd.DataFrame({"PULocationID": [200, 265], "DOLocationID": [250, 1], "trip_distance": [1.0, 5.0]})
    assert np.isfinite(model.predict(unseen)).all()


@pytest.mark.parametrize(
    "uri, destination, expected",
    [
        ("s3://mlflow/1/models/m-1/artifacts", None, "s3://mlflow/1/models/m-1/artifacts"),
        ("mlflow-artifacts:/1/models/m-1/artifacts", "s3://mlflow", "s3://mlflow/1/models/m-1/artifacts"),
        ("mlflow-artifacts://mlflow:5000/1/models/m-1/artifacts", "s3://mlflow/", "s3://mlflow/1/models/m-1/artifacts"),
    ],
)
def test_storage_uri_mapping(uri, destination, expected):
    assert to_storage_uri(uri, destination) == expected


def test_proxied_uri_without_destination_says_how_to_fix():
    with pytest.raises(ValueError, match="--artifacts-destination"):
        to_storage_uri("mlflow-artifacts:/1/models/m-1/artifacts", None)
