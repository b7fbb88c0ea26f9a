"""Calling the predictor over V2 (Open Inference Protocol), and gathering concurrent rides into one call."""

from __future__ import annotations

import asyncio
import os
import ssl
from typing import Awaitable, Callable, Sequence

import aiohttp
import orjson
from kserve import InferInput, InferRequest, InferResponse

from ride import FEATURES, Ride

# KServe's sklearn runtime builds a typed DataFrame from all named inputs only when the request says so;
# without it the model would get inputs[0] alone.
PANDAS_CONTENT = {"content_type": "pd"}
DATATYPES = {"PULocationID": "INT64", "DOLocationID": "INT64", "trip_distance": "FP64"}


class PredictorError(Exception):
    """The predictor could not answer: `status` is 503 when unreachable, 502 when it answered badly."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def infer_request(model_name: str, rides: Sequence[Ride]) -> InferRequest:
    inputs = [
        InferInput(name=c, shape=[len(rides)], datatype=DATATYPES[c], data=[getattr(r, c) for r in rides])
        for c in FEATURES
    ]
    return InferRequest(model_name=model_name, infer_inputs=inputs, parameters=dict(PANDAS_CONTENT))


class Predictor:
    """The predictor's V2 endpoint: kserve's request and response types, sent over one aiohttp session.

    Not kserve's InferenceRESTClient: its httpx stack cost about 0.75 ms of CPU per call (aiohttp: under 0.1 ms),
    the largest share of the transformer's event loop under load (see the README's Performance section).
    """

    def __init__(self, base_url: str, model_name: str, timeout: float, retries: int = 0):
        self.base_url = base_url
        self.url = f"{base_url}/v2/models/{model_name}/infer"
        self.model_name = model_name
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.retries = retries
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # As kserve's client does: the CA bundle the controller sets for transformer-to-predictor TLS.
        ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        ssl_context = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True
        return aiohttp.ClientSession(timeout=self.timeout, connector=aiohttp.TCPConnector(ssl=ssl_context))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def infer(self, rides: Sequence[Ride], headers: dict) -> list[float]:
        if self._session is None:  # created on the running event loop
            self._session = self._open()
        body, _ = infer_request(self.model_name, rides).to_rest()
        data = orjson.dumps(body)
        for attempt in range(self.retries + 1):
            try:
                async with self._session.post(self.url, data=data, headers={**headers, "content-type": "application/json"}) as r:
                    status, content = r.status, await r.read()
                break
            except aiohttp.ClientConnectorError as e:
                if attempt == self.retries:
                    raise PredictorError(f"predictor at {self.base_url} unreachable: {type(e).__name__}: {e}", 503) from e
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                raise PredictorError(f"predictor at {self.base_url} unreachable: {type(e).__name__}: {e}", 503) from e
        if not 200 <= status < 300:
            raise PredictorError(f"predictor at {self.base_url} answered {status}: {content[:200].decode(errors='replace')}", 502)
        try:
            durations = [float(v) for v in InferResponse.from_bytes(content, len(content)).outputs[0].data]
        except (IndexError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise PredictorError(f"predictor at {self.base_url} sent an unreadable response: {e}", 502) from e
        if len(durations) != len(rides):
            raise PredictorError(f"predictor returned {len(durations)} predictions for {len(rides)} rides", 502)
        return durations


class MicroBatcher:
    """Concurrent single-ride requests share a predictor call: one HTTP hop per batch, not per ride.

    Queued rides wait `max_wait` seconds for company, then go in one call of up to `max_rides`; up to `max_calls`
    calls are in flight at once, so one slow call does not hold every ride behind it. Each caller gets its slice.
    """

    def __init__(self, call: Callable[[list[Ride], dict], Awaitable[list[float]]], max_rides: int, max_wait: float,
                 max_calls: int = 1):  # fmt: skip
        self.call = call
        self.max_rides = max_rides
        self.max_wait = max_wait
        self.max_calls = max_calls
        self._queue: list[tuple[list[Ride], dict, asyncio.Future]] = []
        self._in_flight = 0
        self._gathering = False
        self._tasks: set[asyncio.Task] = set()  # held, so that a running call is not garbage-collected

    async def predict(self, rides: list[Ride], headers: dict) -> list[float]:
        future = asyncio.get_running_loop().create_future()
        self._queue.append((rides, headers, future))
        self._next()
        return await future

    def _next(self) -> None:
        """Start gathering the next call when rides wait and a call may start."""
        if self._queue and not self._gathering and self._in_flight < self.max_calls:
            self._gathering = True
            task = asyncio.create_task(self._send())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self) -> None:
        try:
            if self.max_wait:
                await asyncio.sleep(self.max_wait)
        finally:  # cancelled while waiting (the loop shutting down): the queue is untouched, the next caller gathers
            self._gathering = False
        taken, size = [], 0
        while self._queue and (not taken or size + len(self._queue[0][0]) <= self.max_rides):
            item = self._queue.pop(0)
            taken.append(item)
            size += len(item[0])
        self._in_flight += 1
        self._next()  # more than max_rides queued, or a second call allowed
        try:
            durations = await self.call([ride for item in taken for ride in item[0]], taken[0][1])
        except Exception as e:  # every waiting request gets the predictor's error
            for _, _, future in taken:
                if not future.done():
                    future.set_exception(e)
        except asyncio.CancelledError:
            for _, _, future in taken:
                future.cancel()
            raise
        else:
            start = 0
            for item_rides, _, future in taken:
                if not future.done():
                    future.set_result(durations[start : start + len(item_rides)])
                start += len(item_rides)
        finally:
            self._in_flight -= 1
            self._next()


async def error_response(_, exc: PredictorError):
    """kserve's app answers a PredictorError with its status and one line naming the predictor."""
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=exc.status, content={"error": str(exc)})
