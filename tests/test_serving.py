"""The transformer in front of the local sklearn runtime, both real kserve servers, driven over HTTP."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections import Counter

import pandas as pd
import pytest
import requests
import schemathesis
from schemathesis.config import SchemathesisConfig
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ride import FEATURES, serving_mask
from harness import (
    metric,
    ROOT,
    predict_like_kserve,
    read_prediction_logs,
    start_predictor,
    start_transformer,
    unique,
)
from local import traffic

PATH = "/v1/models/trip-duration:predict"


@pytest.fixture(scope="module")
def transformer(workdir, s3, predictor, model):
    log_uri = f"s3://predictions/{unique('serving')}"
    proc, url = start_transformer(workdir, s3, predictor[1], log_uri, model["version"])
    yield proc, url, log_uri
    proc.stop()


def post(url, body, headers=None):
    if isinstance(body, bytes):
        return requests.post(url + PATH, data=body, headers=headers, timeout=30)
    headers = {"Content-Type": "application/json", **(headers or {})}
    return requests.post(url + PATH, data=json.dumps(body), headers=headers, timeout=30)


def ride(ride_id, pu=100, do=102, distance=30.0):
    return {"ride_id": ride_id, "ride": {"PULocationID": pu, "DOLocationID": do, "trip_distance": distance}}


def test_workshop_request_returns_the_models_prediction(transformer, model):
    _, url, _ = transformer
    r = post(url, ride("ride_xyz"), headers={"x-request-id": "req-123"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ride_id"] == "ride_xyz"
    assert body["model_version"] == model["version"]
    expected = predict_like_kserve(model["local_dir"], pd.DataFrame([ride("x")["ride"]]))
    assert body["prediction"]["duration"] == pytest.approx(expected[0], rel=1e-12)
    assert r.headers["x-request-id"] == "req-123"

    generated = post(url, ride("ride_abc"))
    assert len(generated.headers["x-request-id"]) >= 16


def test_batch_returns_one_prediction_per_ride_in_order(transformer, model):
    _, url, _ = transformer
    rows = [ride(f"b{i}", pu=1 + i % 265, do=265 - i % 265, distance=round(0.3 * i, 2)) for i in range(120)]
    rows[7]["ride_id"] = 12345  # numeric ids become strings, as in the workshop
    r = post(url, {"instances": rows})
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert r.json()["errors"] == 0
    assert [p["ride_id"] for p in predictions] == [str(x["ride_id"]) for x in rows]
    assert {p["model_version"] for p in predictions} == {model["version"]}
    expected = predict_like_kserve(model["local_dir"], pd.DataFrame([x["ride"] for x in rows]))
    assert [p["duration"] for p in predictions] == pytest.approx(expected, rel=1e-12)


def test_concurrent_single_rides_each_get_their_own_answer(transformer, model):
    """Micro-batching gathers concurrent rides into one predictor call; answers must not cross."""
    _, url, _ = transformer
    rows = [ride(f"c{i}", pu=1 + (7 * i) % 265, do=1 + (11 * i) % 265, distance=0.5 * i) for i in range(64)]
    results = {}

    def send(row):
        results[row["ride_id"]] = post(url, row).json()

    threads = [threading.Thread(target=send, args=(row,)) for row in rows]
    [t.start() for t in threads]
    [t.join() for t in threads]
    expected = predict_like_kserve(model["local_dir"], pd.DataFrame([x["ride"] for x in rows]))
    for row, value in zip(rows, expected):
        assert results[row["ride_id"]]["ride_id"] == row["ride_id"]
        assert results[row["ride_id"]]["prediction"]["duration"] == pytest.approx(value, rel=1e-12)


def test_every_ride_is_logged_once_with_the_contract_fields(workdir, s3, predictor, model):
    log_uri = f"s3://predictions/{unique('logs')}"
    proc, url = start_transformer(workdir, s3, predictor[1], log_uri, model["version"])
    try:
        ids = [f"log-{i}" for i in range(28)] + ["../../../escape", "/abs/ride?x=1#frag"]  # keys ignore ride_id
        for ride_id in ids[:10]:
            assert post(url, ride(ride_id), headers={"x-request-id": f"rq-{ride_id}"}).status_code == 200
        assert post(url, {"instances": [ride(i) for i in ids[10:]]}).status_code == 200
        assert post(url, ride("", pu=0)).status_code == 400  # rejected rides are not logged
    finally:
        assert proc.stop(signal.SIGTERM) == 0
    records = read_prediction_logs(s3, log_uri)
    assert Counter(r["ride_id"] for r in records) == Counter(ids)
    first = next(r for r in records if r["ride_id"] == "log-0")
    assert set(first) == {
        "record_id", "ride_id", "request_id", "ts", "model_name", "model_version",
        "PULocationID", "DOLocationID", "trip_distance", "prediction", "latency_ms",
    }  # fmt: skip
    assert first["request_id"] == "rq-log-0" and first["model_name"] == "trip-duration"
    assert first["model_version"] == model["version"] and first["ts"].endswith("Z")
    assert len({r["record_id"] for r in records}) == len(records)
    keys = s3.keys("predictions")
    prefix = log_uri.split("/", 3)[3]
    assert not [k for k in keys if "escape" in k or "abs" in k], "a ride_id shaped an object key"
    keys = [k for k in keys if k.startswith(prefix + "/")]
    assert keys and all("/model=trip-duration/date=" in k and "/hour=" in k and k.endswith(".jsonl.gz") for k in keys)


def test_per_request_log_lines_only_with_enable_latency_logging(workdir, s3, predictor, model):
    """The prediction log holds each ride's latency and request id; kserve's and uvicorn's lines per request are
    opt-in (they cost about 5 % of the transformer's CPU per request)."""
    lines = {}
    for args in ((), ("--enable_latency_logging", "true")):
        proc, url = start_transformer(workdir, s3, predictor[1], f"s3://predictions/{unique('lines')}", model["version"],
                                      args=args)  # fmt: skip
        try:
            for i in range(5):
                assert post(url, ride(f"line-{i}"), headers={"x-request-id": f"line-rq-{i}"}).status_code == 200
        finally:
            proc.stop()
        lines[args] = [line for line in proc.log().splitlines() if "line-rq-" in line or f"POST {PATH}" in line]
    assert lines[()] == []
    assert len(lines[("--enable_latency_logging", "true")]) >= 5


def test_local_directory_destination(workdir, s3, predictor, model, tmp_path):
    proc, url = start_transformer(workdir, s3, predictor[1], str(tmp_path / "logs"), model["version"])
    try:
        assert post(url, {"instances": [ride(f"d{i}") for i in range(5)]}).status_code == 200
    finally:
        proc.stop()
    files = list((tmp_path / "logs").rglob("*.jsonl.gz"))
    assert files and all("model=trip-duration" in str(f) for f in files)


BAD_INPUTS = [
    ("not JSON", b"{ride_id: 1", {"Content-Type": "application/json"}, "request format"),
    ("wrong content type", b"ride_id=1", {"Content-Type": "application/x-www-form-urlencoded"}, "Content-Type"),
    ("JSON list", [ride("a")], None, "body"),
    ("JSON string", "just a string", None, "body"),
    ("null body", None, None, "body"),
    ("missing ride_id", {"ride": ride("a")["ride"]}, None, "ride_id: missing"),
    ("missing ride", {"ride_id": "a"}, None, "ride: missing"),
    ("ride not an object", {"ride_id": "a", "ride": [100, 102, 3.0]}, None, "ride: must be an object"),
    ("missing PULocationID", {"ride_id": "a", "ride": {"DOLocationID": 1, "trip_distance": 1}}, None, "ride.PULocationID: missing"),
    ("missing trip_distance", {"ride_id": "a", "ride": {"PULocationID": 1, "DOLocationID": 1}}, None, "ride.trip_distance: missing"),
    ("zone 0", ride("a", pu=0), None, "ride.PULocationID"),
    ("zone 266", ride("a", do=266), None, "ride.DOLocationID"),
    ("zone as string", ride("a", pu="100"), None, "ride.PULocationID"),
    ("zone fractional", ride("a", pu=100.5), None, "ride.PULocationID"),
    ("zone boolean", ride("a", pu=True), None, "ride.PULocationID"),
    ("negative distance", ride("a", distance=-1), None, "ride.trip_distance"),
    ("huge distance", ride("a", distance=1e9), None, "ride.trip_distance"),
    ("distance as string", ride("a", distance="3 miles"), None, "ride.trip_distance"),
    ("NaN distance", b'{"ride_id": "a", "ride": {"PULocationID": 1, "DOLocationID": 2, "trip_distance": NaN}}',
     {"Content-Type": "application/json"}, "request format"),
    ("Infinity distance", b'{"ride_id": "a", "ride": {"PULocationID": 1, "DOLocationID": 2, "trip_distance": Infinity}}',
     {"Content-Type": "application/json"}, "request format"),
    ("huge ride_id", ride("x" * 10_000), None, "ride_id: longer than"),
    ("empty ride_id", ride(""), None, "ride_id: must not be empty"),
    ("blank ride_id", ride("   "), None, "ride_id: must not be empty or only spaces"),
    ("ride_id with a newline", ride("ride\n1"), None, "ride_id: must not contain control characters"),
    ("ride_id object", ride({"id": 1}), None, "ride_id: must be a string"),
    ("instances not a list", {"instances": {"ride_id": "a"}}, None, "instances: must be a list"),
    ("empty batch", {"instances": []}, None, "instances: empty batch"),
    ("over-size batch", {"instances": [ride(f"o{i}") for i in range(1001)]}, None, "more than the maximum of 1000"),
    ("ride and instances", {**ride("a"), "instances": [ride("b")]}, None, "not both"),
]  # fmt: skip


@pytest.mark.parametrize("name, body, headers, message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_400_naming_the_field(transformer, name, body, headers, message):
    _, url, _ = transformer
    r = post(url, body, headers=headers)
    assert r.status_code == 400, (r.status_code, r.text)
    assert message in r.json()["error"]


def test_one_bad_ride_in_a_raw_batch_fails_only_itself(workdir, s3, predictor, model, months):
    """200 rides of a month as a dispatcher sends them, one a meter glitch: 199 scored and logged, one error item."""
    rides = traffic.rides(str(months["val"]))
    bad = rides.index[~serving_mask(rides)]
    first = next(i for i in bad if i >= 100 and not any(0 < abs(j - i) < 200 for j in bad))
    batch = rides.iloc[first - 100 : first + 100].reset_index(drop=True)
    assert serving_mask(batch).sum() == 199, "the stretch holds exactly one ride that cannot be scored"

    log_uri = f"s3://predictions/{unique('raw')}"
    proc, url = start_transformer(workdir, s3, predictor[1], log_uri, model["version"])
    try:
        r = post(url, {"instances": [traffic.instance(row) for row in batch.itertuples()]})
        assert r.status_code == 200, r.text
        body = r.json()
        before = metric(url, 'rides_rejected_total{reason="trip_distance"}')
    finally:
        proc.stop()
    items, good = body["predictions"], serving_mask(batch).to_numpy()
    assert len(items) == 200 and body["errors"] == 1
    error = items[100]
    assert error == {"ride_id": batch.ride_id[100], "error": error["error"]} and "ride.trip_distance" in error["error"]
    expected = predict_like_kserve(model["local_dir"], batch[good][list(FEATURES)])
    scored = [item for item, ok in zip(items, good) if ok]
    assert [i["ride_id"] for i in scored] == batch.ride_id[good].tolist()
    assert [i["duration"] for i in scored] == pytest.approx(expected, rel=1e-12)
    assert Counter(r["ride_id"] for r in read_prediction_logs(s3, log_uri)) == Counter(batch.ride_id[good])
    assert before >= 1


def test_oversized_body_is_413(transformer):
    _, url, _ = transformer
    r = post(url, b"{" + b" " * (2 << 20) + b"}", headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["error"]


def test_oversized_body_without_content_length_is_413(transformer):
    _, url, _ = transformer
    chunks = (b" " * 65536 for _ in range(40))  # a generator: requests sends it chunked, with no Content-Length
    r = requests.post(url + PATH, data=chunks, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.request.headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in r.request.headers
    assert r.status_code == 413 and "larger than" in r.json()["error"]
    assert post(url, ride("after-chunked")).status_code == 200


def fuzz_budget(default: int) -> int:
    """Examples per fuzz test; FUZZ_EXAMPLES searches deeper than the bounded default."""
    return int(os.environ.get("FUZZ_EXAMPLES", default))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)
NEAR_VALID_RIDE = st.fixed_dictionaries(
    {"ride_id": JSON | st.text(max_size=200), "ride": st.fixed_dictionaries(
        {"PULocationID": JSON | st.integers(-5, 300), "DOLocationID": JSON | st.integers(-5, 300),
         "trip_distance": JSON | st.floats(-10, 1e4, allow_nan=False)})})  # fmt: skip
BODIES = JSON | NEAR_VALID_RIDE | st.fixed_dictionaries({"instances": st.lists(NEAR_VALID_RIDE | JSON, max_size=8)})


@settings(max_examples=fuzz_budget(250), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=BODIES)
def test_no_json_body_makes_the_transformer_fail(transformer, body):
    _, url, _ = transformer
    r = requests.post(url + PATH, data=json.dumps(body), headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code in (200, 400), (r.status_code, r.text)
    answer = r.json()
    if r.status_code == 400:
        assert "error" in answer
    elif "predictions" in answer:  # a batch: one item per instance, each a duration or an error
        assert len(answer["predictions"]) == len(body["instances"])
        assert answer["errors"] == sum("error" in item for item in answer["predictions"])
    else:
        assert {"ride_id", "prediction", "model_version"} <= set(answer)


def test_metrics_expose_latency_and_prediction_log_counters(transformer):
    _, url, _ = transformer
    post(url, ride("m1"))
    post(url, ride("m2", pu=0))
    text = requests.get(url + "/metrics", timeout=10).text
    for name in (
        "rides_scored_total",
        'rides_rejected_total{reason="PULocationID"}',
        "request_predict_seconds_bucket",
        "prediction_log_records_written_total",
        "prediction_log_flush_failures_total",
        "prediction_log_records_buffered",
        "prediction_log_records_spilled",
        "prediction_log_records_dropped_total",
    ):
        assert name in text, name


def test_predictor_down_is_503_then_recovers(workdir, s3, model):
    proc, host = start_predictor(workdir, s3, model["storage_uri"])
    transformer_proc, url = start_transformer(workdir, s3, host, f"s3://predictions/{unique('down')}", model["version"])
    try:
        assert post(url, ride("up")).status_code == 200
        proc.stop()
        for body in (ride("down"), {"instances": [ride("down1"), ride("down2")]}):
            r = post(url, body)
            assert r.status_code in (502, 503), r.text
            assert "predictor" in r.json()["error"]
        proc, _ = start_predictor(workdir, s3, model["storage_uri"], port=int(host.split(":")[1]))
        r = post(url, ride("back"))
        assert r.status_code == 200 and r.json()["ride_id"] == "back"
    finally:
        transformer_proc.stop()
        proc.stop()


# A schema-violating body may also be over the body cap (a batch of more than 1000 rides): 413 is the answer then.
OPENAPI = schemathesis.openapi.from_path(
    str(ROOT / "transformer" / "openapi.yaml"),
    config=SchemathesisConfig.from_dict(
        # Invalid input is refused with a 4xx: 400 for what it says, 413 for its size (what this API answers).
        {"checks": {"negative_data_rejection": {"expected-statuses": ["400", "413"]}}}
    ),
)


@OPENAPI.parametrize()
@settings(max_examples=fuzz_budget(150), deadline=None, suppress_health_check=list(HealthCheck))
def test_transformer_honours_its_openapi_description(transformer, case):
    """schemathesis: valid and invalid requests from transformer/openapi.yaml; no 5xx, documented answers only.

    Left out: the Allow-header checks. KServe's router also matches this path as `GET /v1/models/{model_name}`
    (a model named "trip-duration:predict", 404), so its 405s advertise GET; that routing is the SDK's.
    """
    _, url, _ = transformer
    case.call_and_validate(base_url=url, excluded_checks=[schemathesis.checks.allow_header_conformance,
                                                          schemathesis.checks.unsupported_method])  # fmt: skip
