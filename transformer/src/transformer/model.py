"""The transformer: rides in, validated; one V2 call to the predictor; durations out, each ride logged."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import kserve
from kserve.errors import InvalidInput

from transformer.logsink import PredictionLog
from transformer.predictor import MicroBatcher, Predictor
from transformer.validation import RequestError, Ride, parse_request


@dataclass
class Settings:
    model_name: str
    model_version: str
    max_batch_size: int = 1000
    batch_wait_seconds: float = 0.001


def log_records(settings: Settings, rides: list[Ride], durations: list[float], request_id: str, latency_ms: float):
    ts = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return [
        {
            "record_id": uuid.uuid4().hex,
            "ride_id": ride.ride_id,
            "request_id": request_id,
            "ts": ts,
            "model_name": settings.model_name,
            "model_version": settings.model_version,
            "PULocationID": ride.PULocationID,
            "DOLocationID": ride.DOLocationID,
            "trip_distance": ride.trip_distance,
            "prediction": duration,
            "latency_ms": round(latency_ms, 3),
        }
        for ride, duration in zip(rides, durations)
    ]


class TripDurationTransformer(kserve.Model):
    def __init__(self, settings: Settings, prediction_log: PredictionLog):
        super().__init__(settings.model_name, return_response_headers=True)
        self.settings = settings
        self.prediction_log = prediction_log
        self.batcher = MicroBatcher(self._call, settings.max_batch_size, settings.batch_wait_seconds)
        self._predictor: Predictor | None = None
        self.ready = True

    def validate(self, payload):
        return payload  # preprocess has validated every ride already

    async def preprocess(self, payload, headers=None):
        if isinstance(payload, (bytes, str)):  # kserve leaves non-JSON content types undecoded
            raise InvalidInput("body: send JSON with Content-Type: application/json")
        try:
            rides, batch = parse_request(payload, self.settings.max_batch_size)
        except RequestError as e:
            raise InvalidInput(str(e)) from None
        return {"rides": rides, "batch": batch}

    async def _call(self, rides: list[Ride], headers: dict) -> list[float]:
        if self._predictor is None:  # the server sets predictor_config once the model is registered
            config = self.predictor_config
            self._predictor = Predictor(config.predictor_base_url, self.name, config.timeout, config.retries)
        return await self._predictor.infer(rides, headers)

    async def predict(self, payload, headers=None, response_headers=None):
        rides, batch = payload["rides"], payload["batch"]
        request_id = (headers or {}).get("x-request-id", "")
        forward = {"x-request-id": request_id} if request_id else {}
        started = time.perf_counter()
        if batch:
            durations = await self._call(rides, forward)
        else:
            durations = await self.batcher.predict(rides, forward)
        latency_ms = (time.perf_counter() - started) * 1000
        self.prediction_log.add(log_records(self.settings, rides, durations, request_id, latency_ms))

        version = self.settings.model_version
        if batch:
            return {
                "predictions": [
                    {"ride_id": r.ride_id, "duration": d, "model_version": version} for r, d in zip(rides, durations)
                ]
            }
        return {"ride_id": rides[0].ride_id, "prediction": {"duration": durations[0]}, "model_version": version}
