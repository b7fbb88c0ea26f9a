"""The log reader over malformed objects: never a crash, bad objects counted, good records kept."""

import gzip
import json
import os
from datetime import datetime, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitoring.inputs import load_logs

SINCE = datetime(2030, 1, 1, tzinfo=timezone.utc)
UNTIL = datetime(2030, 1, 2, tzinfo=timezone.utc)


def record(i: int) -> dict:
    return {
        "record_id": f"r{i}", "ride_id": f"ride-{i}", "request_id": "q", "ts": "2030-01-01T10:00:00.000Z",
        "model_name": "trip-duration", "model_version": "1", "PULocationID": 1 + i % 265, "DOLocationID": 2,
        "trip_distance": 1.5, "prediction": 12.0, "latency_ms": 3.0,
    }  # fmt: skip


JSON_VALUES = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
MUTATIONS = st.fixed_dictionaries({}, optional={k: JSON_VALUES for k in record(0)})
LINES = st.one_of(
    st.integers(0, 10_000).map(lambda i: json.dumps(record(i))),
    st.tuples(st.integers(0, 10_000), MUTATIONS).map(lambda t: json.dumps({**record(t[0]), **t[1]}, allow_nan=True)),
    st.tuples(st.integers(0, 10_000), st.sampled_from(list(record(0)))).map(
        lambda t: json.dumps({k: v for k, v in record(t[0]).items() if k != t[1]})
    ),
    st.text(max_size=60),
)
OBJECTS = st.lists(
    st.tuples(st.lists(LINES, min_size=1, max_size=8), st.booleans(), st.booleans()), min_size=1, max_size=6
)


@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", 150)),  # raise it to search deeper
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(objects=OBJECTS)
def test_reader_never_crashes_on_malformed_objects(tmp_path_factory, objects):
    root = tmp_path_factory.mktemp("logs")
    folder = root / "model=trip-duration" / "date=2030-01-01" / "hour=10"
    folder.mkdir(parents=True)
    for n, (lines, gzipped, truncated) in enumerate(objects):
        body = ("\n".join(lines) + "\n").encode()
        if gzipped:
            body = gzip.compress(body)
            if truncated:
                body = body[: len(body) // 2]
        (folder / f"{n}.jsonl{'.gz' if gzipped else ''}").write_bytes(body)

    current = load_logs(str(root), SINCE, UNTIL)

    assert current.objects == len(objects)
    assert 0 <= len(current.unreadable) <= len(objects)
    assert len(current.frame) <= sum(len(lines) for lines, _, _ in objects)
    assert current.frame["PULocationID"].between(1, 265).all()
    assert current.frame["trip_distance"].between(0, 500).all()


def test_one_corrupt_object_does_not_hide_the_others(tmp_path):
    folder = tmp_path / "model=trip-duration" / "date=2030-01-01" / "hour=10"
    folder.mkdir(parents=True)
    (folder / "good.jsonl").write_text("".join(json.dumps(record(i)) + "\n" for i in range(5)))
    (folder / "bad.jsonl.gz").write_bytes(b"\x1f\x8b\x08 truncated")
    (folder / "worse.jsonl").write_text('{"record_id": "x", "PULocationID": "not a number"}\n')
    current = load_logs(str(tmp_path), SINCE, UNTIL)
    assert len(current.frame) == 5 and len(current.unreadable) == 2
