import math

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ride
from ride import Ride, RideError, learnable, parse_ride, serving_mask, serving_population


def item(ride_id="r", **features):
    return {"ride_id": ride_id, "ride": {"PULocationID": 1, "DOLocationID": 2, "trip_distance": 1.5, **features}}


def test_a_valid_ride_is_typed_as_the_model_takes_it():
    assert parse_ride(item(7, PULocationID=100.0)) == Ride("7", 100, 2, 1.5)


@pytest.mark.parametrize(
    "body, message, reason",
    [
        (item(PULocationID=266), "ride.PULocationID: must be a zone id 1-265, got 266", "PULocationID"),
        (item(DOLocationID=True), "ride.DOLocationID: must be an integer zone id, got True", "DOLocationID"),
        (item(trip_distance=33884.0), "ride.trip_distance: must be between 0 and 500 miles, got 33884.0", "trip_distance"),
        (item(trip_distance=float("nan")), "ride.trip_distance: must be a finite number of miles, got nan", "trip_distance"),
        (item(ride_id="   "), "ride_id: must not be empty or only spaces", "ride_id"),
        (item(ride_id="a\x1fb"), "ride_id: must not contain control characters", "ride_id"),
        (item(ride_id=["a"]), "ride_id: must be a string (or an integer), got list", "ride_id"),
        ({"ride": {}}, "ride_id: missing", "ride_id"),
        ({"ride_id": "a", "ride": [1, 2, 3]}, "ride: must be an object with PULocationID, DOLocationID, trip_distance", "ride"),
        ({"ride_id": "a", "ride": {"PULocationID": 1}}, "ride.DOLocationID: missing", "DOLocationID"),
        ([1, 2], "instance: must be an object with ride_id and ride", "instance"),
    ],
)
def test_errors_name_the_field(body, message, reason):
    with pytest.raises(RideError) as e:
        parse_ride(body)
    assert str(e.value) == message and e.value.reason == reason


VALUES = (
    st.integers(-10, 600)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.floats(-1, 600).map(lambda x: round(x, 1))
    | st.booleans()
    | st.none()
    | st.text(max_size=4)
)


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.tuples(VALUES, VALUES, VALUES), min_size=1, max_size=20))
def test_the_table_rule_is_the_transformers_rule(rows):
    """`serving_mask` over a table keeps exactly the rows `parse_ride` accepts, value for value."""
    table = pd.DataFrame(rows, columns=list(ride.FEATURES), dtype=object)
    expected = []
    for pu, do, distance in rows:
        try:
            parse_ride(item(PULocationID=pu, DOLocationID=do, trip_distance=distance))
            expected.append(True)
        except RideError:
            expected.append(False)
    assert serving_mask(table).tolist() == expected


def tlc_month(**columns) -> pd.DataFrame:
    start = pd.Timestamp("2030-01-01 10:00")
    minutes = columns.pop("minutes")
    n = len(minutes)
    base = {
        "lpep_pickup_datetime": [start + pd.Timedelta(hours=i) for i in range(n)],
        "PULocationID": [10] * n,
        "DOLocationID": [20] * n,
        "trip_distance": [2.0] * n,
    }
    base["lpep_dropoff_datetime"] = [t + pd.Timedelta(minutes=m) for t, m in zip(base["lpep_pickup_datetime"], minutes)]
    return pd.DataFrame({**base, **columns})


def test_the_serving_population_keeps_odd_durations_and_drops_what_cannot_be_scored():
    raw = tlc_month(minutes=[0.2, -3, 30, 600, 10, 10], trip_distance=[0.0, 1.0, 2.0, 3.0, 33884.0, 4.0],
                    PULocationID=[5, 5, 5, 5, 5, 266])  # fmt: skip
    rides = serving_population(raw, "month.parquet")
    assert rides["trip_distance"].tolist() == [0.0, 1.0, 2.0, 3.0]  # the meter glitch and zone 266 are out
    assert rides["duration"].tolist() == pytest.approx([0.2, -3, 30, 600])
    assert list(rides.columns) == ["PULocationID", "DOLocationID", "trip_distance", "pickup_datetime", "duration"]
    assert rides.dtypes["PULocationID"] == "int64" and rides.dtypes["trip_distance"] == "float64"
    assert learnable(rides)["duration"].tolist() == [30]


def test_a_table_without_the_features_is_refused_by_name():
    with pytest.raises(ride.SourceError, match="month.csv: missing columns DOLocationID"):
        serving_population(pd.DataFrame({"PULocationID": [1], "trip_distance": [1.0]}), "month.csv")


def test_yellow_taxi_times_work_too():
    raw = tlc_month(minutes=[12]).rename(columns=lambda c: c.replace("lpep", "tpep"))
    assert serving_population(raw)["duration"].tolist() == [12]


def test_log_records_carry_the_contract_fields_and_keys_ignore_request_data():
    ts = ride.utc_timestamp()
    record = ride.log_record(Ride("../x", 1, 2, 3.0), 12.5, model_name="trip-duration", model_version="3",
                             request_id="q", ts=ts, latency_ms=1.23456)  # fmt: skip
    assert list(record) == list(ride.LOG_FIELDS)
    assert record["latency_ms"] == 1.235 and ts.endswith("Z") and len(ts) == 24
    key = ride.log_key("trip-duration", ts)
    match = ride.LOG_KEY.search(key)
    assert match and match["date"] == ts[:10] and match["hour"] == ts[11:13] and "../x" not in key


def test_a_month_resolves_to_the_local_copy_or_tlc(tmp_path):
    assert ride.resolve_month("2022-01", str(tmp_path)) == ride.TLC_URL.format(month="2022-01")
    (tmp_path / "green_tripdata_2022-01.parquet").write_bytes(b"")
    assert ride.resolve_month("2022-01", str(tmp_path)) == str(tmp_path / "green_tripdata_2022-01.parquet")
    assert ride.resolve_month("2022-01") == ride.TLC_URL.format(month="2022-01")
    assert ride.resolve_month("s3://data/x.parquet", str(tmp_path)) == "s3://data/x.parquet"
    assert not math.isnan(ride.MAX_TRIP_DISTANCE)


def test_actuals_are_read_back_one_per_ride_the_last_to_arrive_winning(tmp_path):
    from ride.reader import read_actuals

    def arrive(ts, records):
        path = tmp_path / ride.actuals_key(ts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(ride.jsonl_gz(records))

    arrive("2030-01-01T10:59:59.000Z", [{"ride_id": "a", "dropoff_datetime": "x", "duration": 10.0}])
    arrive("2030-01-01T11:00:01.000Z", [{"ride_id": "a", "dropoff_datetime": "x", "duration": 12.0},
                                        {"ride_id": "b", "dropoff_datetime": "x", "duration": None}])  # fmt: skip
    (tmp_path / "date=2030-01-01" / "hour=11" / "damaged.jsonl.gz").write_bytes(b"\x1f\x8b nope")
    got = read_actuals(str(tmp_path))
    assert got.frame.set_index("ride_id")["duration"].to_dict() == {"a": 12.0}  # b has no duration yet
    assert got.objects == 3 and len(got.unreadable) == 1 and got.duplicates == 1


def test_a_setting_comes_from_its_flag_else_its_environment_variable_else_its_default_and_help_says_so(monkeypatch):
    import argparse
    from dataclasses import dataclass

    from ride.settings import add_arguments, positive, read, setting

    @dataclass
    class Settings:
        max_batch_size: int = setting("rides per request", 1000, env="MAX_BATCH_SIZE", type=positive(int))
        log_uri: str = setting("where records go", "logs", env="LOG_URI")

    def parse(*argv):
        parser = argparse.ArgumentParser(prog="x", exit_on_error=False)
        add_arguments(parser, Settings, underscores=True)
        return parser, read(Settings, parser.parse_args(argv))

    parser, settings = parse()
    assert settings == Settings(1000, "logs")
    assert "rides per request (env MAX_BATCH_SIZE; default: 1000)" in " ".join(parser.format_help().split())
    monkeypatch.setenv("MAX_BATCH_SIZE", "5")
    assert parse()[1].max_batch_size == 5
    monkeypatch.setenv("MAX_BATCH_SIZE", "0")  # a refusal names where the value came from
    with pytest.raises(argparse.ArgumentError, match="MAX_BATCH_SIZE=0: must be positive"):
        parse()
    assert parse("--max_batch_size", "3")[1].max_batch_size == 3
    monkeypatch.setenv("LOG_URI", "s3://from/env")
    assert type(parse("--max_batch_size", "3")[1].log_uri) is str  # a plain string, as yaml and json expect
    monkeypatch.setenv("MAX_BATCH_SIZE", "5")
    assert parse("--max_batch_size", "7", "--log_uri", "s3://b/p")[1] == Settings(7, "s3://b/p")
    with pytest.raises(argparse.ArgumentError, match="must be positive, got 0"):
        parse("--max_batch_size", "0")
    for text, message in (("-1", "must be zero or more"), ("nan", "must be a finite"), ("1e400", "must be a finite"),
                          ("x", "not a valid")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            positive(float, zero=True)(text)
    assert positive(float, zero=True)("0") == 0.0
