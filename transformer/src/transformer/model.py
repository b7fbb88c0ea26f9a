"""The transformer: rides in, validated; one V2 call to the predictor; durations out, each scored ride logged."""

from __future__ import annotations

import time

import kserve
from kserve.errors import InvalidInput
from prometheus_client import Counter

import ride
from ride import Ride
from transformer.logsink import PredictionLog
from transformer.predictor import MicroBatcher, Predictor
from transformer.settings import Settings
from transformer.validation import Rejected, RequestError, parse_request

SCORED = Counter("rides_scored", "Rides scored and logged")
REJECTED = Counter("rides_rejected", "Rides refused (400, or an error item in a batch), by the field at fault", ["reason"])


class Refused(InvalidInput):
    """A request refused with 400 and the field at fault: an answer, not a failure, so no traceback in the log
    (kserve's handler for InvalidInput logs one for every refused ride)."""


async def refused_response(_, exc: Refused):
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=400, content={"error": str(exc)})


class TripDurationTransformer(kserve.Model):
    def __init__(self, name: str, settings: Settings, prediction_log: PredictionLog):
        super().__init__(name)
        self.settings = settings
        self.prediction_log = prediction_log
        self.batcher = MicroBatcher(self._call, settings.max_batch_size, settings.batch_wait_ms / 1000,
                                    settings.max_predictor_calls)  # fmt: skip
        self._predictor: Predictor | None = None
        self.ready = True

    async def preprocess(self, payload, headers=None):
        if isinstance(payload, (bytes, str)):  # kserve leaves non-JSON content types undecoded
            REJECTED.labels("body").inc()
            raise Refused("body: send JSON with Content-Type: application/json")
        try:
            items, batch = parse_request(payload, self.settings.max_batch_size)
        except RequestError as e:
            REJECTED.labels(e.reason).inc()
            raise Refused(str(e)) from None
        return {"items": items, "batch": batch}

    async def _call(self, rides: list[Ride], headers: dict) -> list[float]:
        if self._predictor is None:  # the server sets predictor_config once the model is registered
            config = self.predictor_config
            self._predictor = Predictor(config.predictor_base_url, self.name, config.timeout, config.retries)
        return await self._predictor.infer(rides, headers)

    async def close(self) -> None:
        if self._predictor is not None:
            await self._predictor.close()

    async def predict(self, payload, headers=None):
        items, batch = payload["items"], payload["batch"]
        rides = [item for item in items if isinstance(item, Ride)]
        request_id = (headers or {}).get("x-request-id", "")
        forward = {"x-request-id": request_id} if request_id else {}
        started = time.perf_counter()
        if not rides:
            durations = []
        elif batch:
            durations = await self._call(rides, forward)
        else:
            durations = await self.batcher.predict(rides, forward)
        latency_ms = (time.perf_counter() - started) * 1000
        self._log(rides, durations, request_id, latency_ms)

        version = self.settings.model_version
        if not batch:
            return {"ride_id": rides[0].ride_id, "prediction": {"duration": durations[0]}, "model_version": version}
        scored = iter(durations)
        results = []
        for item in items:
            if isinstance(item, Rejected):
                REJECTED.labels(item.error.reason).inc()
                results.append({"error": str(item.error)} if item.ride_id is None else {"ride_id": item.ride_id, "error": str(item.error)})
            else:
                results.append({"ride_id": item.ride_id, "duration": next(scored), "model_version": version})
        return {"predictions": results, "errors": len(items) - len(rides)}

    def _log(self, rides: list[Ride], durations: list[float], request_id: str, latency_ms: float) -> None:
        if not rides:
            return
        ts = ride.utc_timestamp()
        s = self.settings
        self.prediction_log.add(
            [
                ride.log_record(r, d, model_name=self.name, model_version=s.model_version, request_id=request_id,
                                ts=ts, latency_ms=latency_ms)
                for r, d in zip(rides, durations)
            ]  # fmt: skip
        )
        SCORED.inc(len(rides))
