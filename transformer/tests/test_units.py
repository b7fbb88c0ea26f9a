import asyncio
import gzip
import json

import pytest

from transformer.logsink import LocalDestination, PredictionLog
from ride import Ride
from transformer.predictor import MicroBatcher, infer_request
from transformer.validation import Rejected, RequestError, parse_request


def body(**ride):
    return {"ride_id": "r", "ride": {"PULocationID": 1, "DOLocationID": 2, "trip_distance": 1.5, **ride}}


def test_single_and_batch_parse_to_rides():
    assert parse_request(body(), 10) == ([Ride("r", 1, 2, 1.5)], False)
    rides, batch = parse_request({"instances": [body(), {**body(), "ride_id": 7}]}, 10)
    assert batch and [r.ride_id for r in rides] == ["r", "7"]


@pytest.mark.parametrize(
    "payload, message",
    [
        (body(PULocationID=266), "ride.PULocationID: must be a zone id 1-265, got 266"),
        (body(trip_distance=float("inf")), "ride.trip_distance: must be a finite number"),
        ({"instances": [body()] * 11}, "11 rides, more than the maximum of 10"),
        ({"instances": "x"}, "instances: must be a list"),
    ],
)
def test_unusable_requests_name_the_field(payload, message):
    with pytest.raises(RequestError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_request(payload, 10)


def test_a_bad_ride_in_a_batch_is_its_own_result():
    items, batch = parse_request({"instances": [body(), body(DOLocationID=None), {**body(), "ride_id": ""}, 7]}, 10)
    assert batch and items[0] == Ride("r", 1, 2, 1.5)
    assert [type(i) for i in items[1:]] == [Rejected] * 3
    assert items[1].ride_id == "r" and str(items[1].error).startswith("ride.DOLocationID")
    assert items[2].ride_id is None and items[3].ride_id is None
    assert [i.error.reason for i in items[1:]] == ["DOLocationID", "ride_id", "instance"]


def test_v2_request_carries_typed_named_columns_and_pandas_content_type():
    request = infer_request("trip-duration", [Ride("a", 1, 2, 3.0), Ride("b", 4, 5, 6.5)])
    rest, _ = request.to_rest()
    assert rest["parameters"] == {"content_type": "pd"}
    assert [(i["name"], i["datatype"], i["data"]) for i in rest["inputs"]] == [
        ("PULocationID", "INT64", [1, 4]),
        ("DOLocationID", "INT64", [2, 5]),
        ("trip_distance", "FP64", [3.0, 6.5]),
    ]


def test_micro_batcher_gathers_concurrent_callers_and_splits_answers():
    calls = []

    async def predictor(rides, headers):
        calls.append(len(rides))
        return [float(r.PULocationID) for r in rides]

    async def scenario():
        batcher = MicroBatcher(predictor, max_rides=100, max_wait=0.005)
        rides = [[Ride(str(i), i + 1, 1, 1.0)] for i in range(20)]
        return await asyncio.gather(*(batcher.predict(r, {}) for r in rides))

    answers = asyncio.run(scenario())
    assert answers == [[float(i + 1)] for i in range(20)]
    assert calls == [20]


class FlakyDestination:
    def __init__(self, root):
        self.inner = LocalDestination(str(root))
        self.up = False

    def put(self, key, body):
        if not self.up:
            raise ConnectionError("destination down")
        self.inner.put(key, body)


def records(n, hour="10"):
    return [{"record_id": f"{hour}-{i}", "ts": f"2030-01-01T{hour}:00:00.000Z", "ride_id": str(i)} for i in range(n)]


def logged(root):
    return [json.loads(line) for f in root.rglob("*.jsonl.gz") for line in gzip.decompress(f.read_bytes()).splitlines()]


def test_log_spills_while_down_and_ships_when_back(tmp_path):
    destination = FlakyDestination(tmp_path / "out")
    sink = PredictionLog(destination, "m", str(tmp_path / "spill"), max_buffered=50)
    sink.add(records(30, "10") + records(30, "11"))  # over max_buffered: spilled straight to disk
    assert not sink.flush()
    assert sink._spilled_records() == 60
    destination.up = True
    assert sink.flush()
    assert sorted(r["record_id"] for r in logged(tmp_path / "out")) == sorted(
        r["record_id"] for r in records(30, "10") + records(30, "11")
    )
    hours = {p.parent.name for p in (tmp_path / "out").rglob("*.jsonl.gz")}
    assert hours == {"hour=10", "hour=11"}


def test_log_drops_and_counts_only_when_memory_and_disk_are_full(tmp_path):
    from transformer.logsink import DROPPED

    before = DROPPED._value.get()
    sink = PredictionLog(FlakyDestination(tmp_path / "out"), "m", str(tmp_path / "spill"), max_buffered=10, max_spill_bytes=1)
    sink.add(records(8))
    sink.add(records(8))
    assert DROPPED._value.get() - before == 8
