import asyncio
import gzip
import json
import sys
import threading
import time

import pytest
from prometheus_client import REGISTRY

from ride import Ride
from ride import jsonl_gz
from transformer.logsink import LocalDestination, PredictionLog
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
    """A destination that can be taken down, and that can fail after some number of writes."""

    def __init__(self, root, up=False, fail_after=None, delay=0.0):
        self.inner = LocalDestination(str(root))
        self.up = up
        self.fail_after = fail_after
        self.delay = delay
        self.puts = 0

    def put(self, key, body):
        time.sleep(self.delay)
        if not self.up or (self.fail_after is not None and self.puts >= self.fail_after):
            raise ConnectionError("destination down")
        self.puts += 1
        self.inner.put(key, body)


def records(n, hour="10", start=0):
    return [
        {"record_id": f"{hour}-{i}", "ts": f"2030-01-01T{hour}:00:00.000Z", "ride_id": str(i)}
        for i in range(start, start + n)
    ]


def logged(root):
    return [json.loads(line) for f in root.rglob("*.jsonl.gz") for line in gzip.decompress(f.read_bytes()).splitlines()]


def ids(rows):
    return sorted(r["record_id"] for r in rows)


def metric(name):
    return REGISTRY.get_sample_value(name) or 0.0


@pytest.fixture
def counters():
    """The sink's counters' increase during a test."""
    names = ("prediction_log_records_dropped_total", "prediction_log_flush_failures_total",
             "prediction_log_spill_files_quarantined_total", "prediction_log_records_written_total")  # fmt: skip
    before = {n: metric(n) for n in names}
    return lambda name: metric(f"prediction_log_{name}_total") - before[f"prediction_log_{name}_total"]


def test_log_spills_while_down_and_ships_when_back(tmp_path, counters):
    destination = FlakyDestination(tmp_path / "out")
    sink = PredictionLog(destination, "m", str(tmp_path / "spill"))
    sink.add(records(30, "10") + records(30, "11"))
    assert not sink.flush()
    assert sink.spilled_records() == 60 and metric("prediction_log_records_buffered") == 0
    assert metric("prediction_log_records_spilled") == 60
    destination.up = True
    assert sink.flush()
    assert ids(logged(tmp_path / "out")) == ids(records(30, "10") + records(30, "11"))
    assert {p.parent.name for p in (tmp_path / "out").rglob("*.jsonl.gz")} == {"hour=10", "hour=11"}
    assert counters("records_written") == 60 and counters("records_dropped") == 0


def test_memory_holds_records_while_the_spill_directory_is_full(tmp_path, counters):
    destination = FlakyDestination(tmp_path / "out")
    sink = PredictionLog(destination, "m", str(tmp_path / "spill"), max_buffered=50, max_spill_bytes=1)
    sink.add(records(30))
    for _ in range(3):
        assert not sink.flush()
    assert metric("prediction_log_records_buffered") == 30 and sink.spilled_records() == 0
    assert counters("records_dropped") == 0
    destination.up = True
    assert sink.flush()
    assert ids(logged(tmp_path / "out")) == ids(records(30))


def test_past_both_limits_the_oldest_are_dropped_and_counted(tmp_path, counters):
    destination = FlakyDestination(tmp_path / "out")
    one_file = len(jsonl_gz(records(10)))
    sink = PredictionLog(destination, "m", str(tmp_path / "spill"), flush_records=10, max_buffered=20,
                         max_spill_bytes=int(one_file * 3.5))  # fmt: skip
    added = []
    for k in range(10):
        batch = records(10, start=10 * k)
        added += batch
        sink.add(batch)
        sink.flush()
    dropped = counters("records_dropped")
    assert dropped > 0
    destination.up = True
    assert sink.flush()
    delivered = [r["record_id"] for r in sorted(logged(tmp_path / "out"), key=lambda r: int(r["ride_id"]))]
    assert len(delivered) + dropped == len(added), "a record was lost without being counted"
    assert len(delivered) >= 20, "memory must be full before anything is dropped"
    assert delivered == [r["record_id"] for r in added[-len(delivered) :]], "the oldest go first"


def test_a_spill_directory_that_cannot_be_written_leaves_records_in_memory(tmp_path, counters):
    destination = FlakyDestination(tmp_path / "out")
    spill = tmp_path / "spill"
    sink = PredictionLog(destination, "m", str(spill), max_buffered=50)
    spill.rmdir()
    spill.write_text("not a directory")  # every write under it fails, even for root
    sink.add(records(30))
    assert not sink.flush()
    assert counters("flush_failures") >= 2  # the destination, and the spill directory
    assert metric("prediction_log_records_buffered") == 30 and counters("records_dropped") == 0
    sink.add(records(40, start=30))  # past max_buffered, with nowhere else to go: the oldest 20 are dropped
    sink.flush()
    assert counters("records_dropped") == 20 and metric("prediction_log_records_buffered") == 50
    destination.up = True
    assert sink.flush()
    assert ids(logged(tmp_path / "out")) == ids(records(50, start=20))


def test_unreadable_spill_files_are_quarantined_and_the_rest_shipped(tmp_path, counters):
    spill = tmp_path / "spill"
    down = PredictionLog(FlakyDestination(tmp_path / "out"), "m", str(spill))
    down.add(records(20))
    down.flush()
    [good] = spill.glob("*.jsonl.gz")
    truncated = spill / good.name.replace("-20-", "-21-", 1).replace(good.name[:20], f"{1:020d}")
    truncated.write_bytes(good.read_bytes()[:-30])
    wrong_count = spill / good.name.replace(good.name[:20], f"{2:020d}").replace("-20-", "-7-", 1)
    wrong_count.write_bytes(good.read_bytes())
    (spill / "notes.txt").write_text("not ours")
    (spill / ".00000000000000000003-5-2030-01-01T10-deadbeef.jsonl.gz.tmp").write_bytes(b"\x1f\x8b")

    sink = PredictionLog(FlakyDestination(tmp_path / "out", up=True), "m", str(spill))
    assert sink.flush()
    assert ids(logged(tmp_path / "out")) == ids(records(20))
    assert counters("spill_files_quarantined") == 4
    assert sorted(p.name for p in (spill / "quarantine").iterdir()) == sorted(
        [truncated.name, wrong_count.name, "notes.txt", ".00000000000000000003-5-2030-01-01T10-deadbeef.jsonl.gz.tmp"]
    )
    assert sink.flush() and counters("spill_files_quarantined") == 4, "a quarantined file is not tried again"


def test_a_record_json_cannot_encode_is_dropped_and_counted_alone(tmp_path, counters):
    destination = FlakyDestination(tmp_path / "out")
    sink = PredictionLog(destination, "m", str(tmp_path / "spill"))
    bad = {**records(1, start=99)[0], "prediction": {1, 2}}  # a set: not JSON
    sink.add(records(5) + [bad] + records(5, start=5))
    assert not sink.flush()
    destination.up = True
    assert sink.flush()
    assert ids(logged(tmp_path / "out")) == ids(records(10))
    assert counters("records_dropped") == 1


def test_a_partial_write_keeps_only_what_was_not_written(tmp_path):
    destination = FlakyDestination(tmp_path / "out", up=True, fail_after=1)
    sink = PredictionLog(destination, "m", str(tmp_path / "spill"))
    sink.add(records(10, "10") + records(10, "11"))
    assert not sink.flush()
    assert sink.spilled_records() == 10
    destination.fail_after = None
    assert sink.flush()
    assert ids(logged(tmp_path / "out")) == ids(records(10, "10") + records(10, "11"))  # each exactly once


def test_add_does_no_io_while_the_flusher_ships_and_overflows(tmp_path, counters):
    """Eight threads add while the destination is slow and flaky, memory is small and the spill dir fills."""
    destination = FlakyDestination(tmp_path / "out", up=True, delay=0.003)
    # Only the timer wakes the flusher, so memory overflows between its passes.
    sink = PredictionLog(destination, "m", str(tmp_path / "spill"), flush_records=10**6, flush_seconds=0.02,
                         max_buffered=500).start()  # fmt: skip
    adders = set()
    opened_by_adders = []

    def audit(event, args):
        if event == "open" and threading.current_thread().name in adders:
            opened_by_adders.append(args[0])

    sys.addaudithook(audit)
    errors = []

    def adder(n):
        try:
            for i in range(250):
                sink.add([{"record_id": f"{n}-{i}-{j}", "ts": "2030-01-01T10:00:00.000Z", "ride_id": "x"} for j in range(4)])
                time.sleep(0.001)
                if n == 0 and i % 50 == 0:
                    destination.up = not destination.up
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=adder, args=(n,), name=f"adder-{n}") for n in range(8)]
    adders.update(t.name for t in threads)
    [t.start() for t in threads]
    [t.join() for t in threads]
    destination.up = True
    assert sink.close(budget=30) == 0
    adders.clear()
    assert errors == [] and opened_by_adders == []
    delivered = [r["record_id"] for r in logged(tmp_path / "out")]
    assert len(set(delivered)) + counters("records_dropped") == 8 * 250 * 4
    assert counters("records_dropped") == 0


def test_close_with_the_destination_down_leaves_everything_for_the_next_start(tmp_path, caplog):
    spill = tmp_path / "spill"
    sink = PredictionLog(FlakyDestination(tmp_path / "out"), "m", str(spill), flush_seconds=60).start()
    sink.add(records(25, "10") + records(12, "11"))
    started = time.monotonic()
    assert sink.close(budget=1.0) == 37
    assert time.monotonic() - started < 3
    assert "37 records not delivered within the 1 s shutdown budget" in caplog.text

    again = PredictionLog(FlakyDestination(tmp_path / "out", up=True), "m", str(spill))
    assert metric("prediction_log_records_spilled") == 37
    assert again.flush()
    assert ids(logged(tmp_path / "out")) == ids(records(25, "10") + records(12, "11"))


def test_close_holds_its_budget_when_the_destination_hangs(tmp_path):
    sink = PredictionLog(FlakyDestination(tmp_path / "out", up=True, delay=1.5), "m", str(tmp_path / "spill")).start()
    sink.add(records(10, "10") + records(10, "11") + records(10, "12"))
    started = time.monotonic()
    left = sink.close(budget=1.0)
    assert time.monotonic() - started < 1.0 + 1.5 + 0.5  # the budget, plus the one write in progress
    assert left == 20 and len(logged(tmp_path / "out")) == 10


def test_micro_batcher_splits_a_queue_larger_than_max_rides():
    calls = []

    async def predictor(rides, headers):
        calls.append([r.ride_id for r in rides])
        await asyncio.sleep(0.001)
        return [float(r.PULocationID) for r in rides]

    async def scenario():
        batcher = MicroBatcher(predictor, max_rides=5, max_wait=0.005)
        requests = [[Ride(f"s{i}", i + 1, 1, 1.0)] for i in range(12)]
        requests.insert(4, [Ride(f"b{j}", 100 + j, 1, 1.0) for j in range(3)])
        return requests, await asyncio.gather(*(batcher.predict(r, {}) for r in requests))

    requests, answers = asyncio.run(scenario())
    assert answers == [[float(r.PULocationID) for r in rides] for rides in requests]
    assert all(len(c) <= 5 for c in calls) and len(calls) >= 3
    assert sorted(x for c in calls for x in c) == sorted(r.ride_id for rides in requests for r in rides)


def test_micro_batcher_keeps_at_most_max_calls_in_flight_and_fails_only_the_rides_of_a_failed_call():
    in_flight, most, calls = 0, 0, []

    async def predictor(rides, headers):
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        calls.append([r.ride_id for r in rides])
        first = len(calls) == 1
        await asyncio.sleep(0.02)
        in_flight -= 1
        if first:
            raise ConnectionError("predictor down")
        return [float(r.PULocationID) for r in rides]

    async def scenario():
        batcher = MicroBatcher(predictor, max_rides=2, max_wait=0.001, max_calls=2)
        requests = [[Ride(f"s{i}", i + 1, 1, 1.0)] for i in range(8)]
        return await asyncio.gather(*(batcher.predict(r, {}) for r in requests), return_exceptions=True)

    answers = asyncio.run(scenario())
    assert most == 2 and len(calls) == 4
    failed = {f"s{i}" for i, a in enumerate(answers) if isinstance(a, ConnectionError)}
    assert failed == set(calls[0])
    assert all(a == [float(i + 1)] for i, a in enumerate(answers) if f"s{i}" not in failed)


def test_micro_batcher_gathers_again_after_a_cancelled_wait():
    async def predictor(rides, headers):
        return [float(r.PULocationID) for r in rides]

    async def scenario():
        batcher = MicroBatcher(predictor, max_rides=10, max_wait=0.05)
        first = asyncio.create_task(batcher.predict([Ride("a", 1, 1, 1.0)], {}))
        await asyncio.sleep(0.01)
        for gathering in list(batcher._tasks):  # as when the event loop shuts down
            gathering.cancel()
        await asyncio.sleep(0)
        second = await asyncio.wait_for(batcher.predict([Ride("b", 2, 1, 1.0)], {}), timeout=1)
        return await asyncio.wait_for(first, timeout=1), second

    assert asyncio.run(scenario()) == ([1.0], [2.0])
