"""`python -m transformer`: KServe's standard flags, plus the prediction-log settings from the environment."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import tempfile
import uuid

from kserve import model_server

from transformer.predictor import PredictorError

log = logging.getLogger("transformer")

# On SIGTERM, in-flight requests get this long to finish (the predictor timeout bounds them anyway), then the
# prediction log gets its budget. The pod's terminationGracePeriodSeconds (training/isvc.py) holds both.
DRAIN_SECONDS = 10

ENVIRONMENT = """\
environment:
  MODEL_VERSION                     registry version served, returned with every prediction (the SDK
                                    drops it from V2 responses)
  PREDICTION_LOG_URI                s3://bucket/prefix or a local directory (default: ./prediction-logs);
                                    S3 endpoint and credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, …
  PREDICTION_LOG_SPILL_DIR          where records wait while the destination is down (default: a temp dir)
  PREDICTION_LOG_FLUSH_RECORDS      write an object every N records (default 500) …
  PREDICTION_LOG_FLUSH_SECONDS      … or every T seconds (default 2)
  PREDICTION_LOG_MAX_BUFFERED       records held in memory before spilling to disk (default 50000)
  PREDICTION_LOG_MAX_SPILL_MB       spill directory limit; past it and memory, the oldest records are dropped
                                    and counted (default 512)
  PREDICTION_LOG_SHUTDOWN_SECONDS   on SIGTERM, how long to try shipping what waits (default 20); the rest stays
                                    in the spill directory for the next start, and its number is logged
"""


def env_number(name: str, default, kind=int):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        sys.exit(f"error: {name}={raw!r} is not a valid {kind.__name__}")
    if value <= 0:
        sys.exit(f"error: {name} must be positive, got {raw}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m transformer",
        parents=[model_server.parser],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="KServe transformer for trip-duration: validates rides (single or batch), calls the "
        "predictor over V2, returns durations with ride_id and model_version, and logs every prediction.",
        epilog=ENVIRONMENT,
    )
    p.add_argument("--max_batch_size", type=int, default=env_number("MAX_BATCH_SIZE", 1000), help="rides per request (default 1000)")
    p.add_argument("--max_body_bytes", type=int, default=env_number("MAX_BODY_BYTES", 1 << 20), help="request body limit (default 1 MiB)")
    p.add_argument(
        "--batch_wait_ms",
        type=float,
        default=1.0,
        help="how long single-ride requests wait to share one predictor call (default 1 ms; 0 = only what is queued)",
    )
    # The controller does not pass --predictor_protocol, and our predictor speaks V2; 600 s is no timeout for a ride.
    p.set_defaults(model_name="trip-duration", predictor_protocol="v2", predictor_request_timeout_seconds=10, enable_grpc=False)
    return p


class RequestIdAndBodyLimit:
    """ASGI middleware: every request gets an x-request-id (kept if sent) echoed on the response; bodies are capped."""

    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id", b"")
        if not request_id or len(request_id) > 128 or not request_id.isascii():
            request_id = uuid.uuid4().hex.encode()
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"x-request-id"]
            scope["headers"].append((b"x-request-id", request_id))

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message["headers"] = [*kept, (b"x-request-id", request_id)]
            await send(message)

        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_body_bytes:
            return await self._reject(send_with_id, 413, f"body: larger than {self.max_body_bytes} bytes")

        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise BodyTooLarge()
            return message

        try:
            await self.app(scope, counted_receive, send_with_id)
        except BodyTooLarge:
            await self._reject(send_with_id, 413, f"body: larger than {self.max_body_bytes} bytes")

    @staticmethod
    async def _reject(send, status: int, message: str):
        import orjson

        body = orjson.dumps({"error": message})
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


class BodyTooLarge(Exception):
    pass


async def predictor_error_handler(_, exc: PredictorError):
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=exc.status, content={"error": str(exc)})


def main() -> None:
    args, _ = parser().parse_known_args()
    if not args.predictor_host:
        sys.exit("error: --predictor_host HOST:PORT is required (the predictor's V2 endpoint)")

    import kserve
    from kserve.predictor_config import PredictorConfig

    from transformer.logsink import PredictionLog, destination_for
    from transformer.model import Settings, TripDurationTransformer

    log_uri = os.environ.get("PREDICTION_LOG_URI") or "prediction-logs"
    spill_dir = os.environ.get("PREDICTION_LOG_SPILL_DIR") or os.path.join(tempfile.gettempdir(), "prediction-log-spill")
    shutdown_seconds = env_number("PREDICTION_LOG_SHUTDOWN_SECONDS", 20.0, float)
    try:
        prediction_log = PredictionLog(
            destination_for(log_uri),
            args.model_name,
            spill_dir,
            flush_records=env_number("PREDICTION_LOG_FLUSH_RECORDS", 500),
            flush_seconds=env_number("PREDICTION_LOG_FLUSH_SECONDS", 2.0, float),
            max_buffered=env_number("PREDICTION_LOG_MAX_BUFFERED", 50_000),
            max_spill_bytes=env_number("PREDICTION_LOG_MAX_SPILL_MB", 512) * 1024 * 1024,
        ).start()
    except OSError as e:
        sys.exit(f"error: PREDICTION_LOG_SPILL_DIR={spill_dir}: {e.strerror or e}; point it at a writable directory")
    settings = Settings(
        model_name=args.model_name,
        model_version=os.environ.get("MODEL_VERSION", "unknown"),
        max_batch_size=args.max_batch_size,
        batch_wait_seconds=args.batch_wait_ms / 1000,
    )
    model = TripDurationTransformer(settings, prediction_log)

    model_server.app.add_middleware(RequestIdAndBodyLimit, max_body_bytes=args.max_body_bytes)
    model_server.app.add_exception_handler(PredictorError, predictor_error_handler)
    server = kserve.ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        enable_grpc=args.enable_grpc,
        workers=1,  # the prediction log lives in this process
        grace_period=DRAIN_SECONDS,
        predictor_config=PredictorConfig(
            predictor_host=args.predictor_host,
            predictor_protocol=args.predictor_protocol,
            predictor_use_ssl=args.predictor_use_ssl,
            predictor_request_timeout_seconds=args.predictor_request_timeout_seconds,
            predictor_request_retries=args.predictor_request_retries,
        ),
    )
    log.info("serving %s version %s; prediction logs to %s", args.model_name, settings.model_version, log_uri)
    # Everything loaded so far (kserve, fastapi, pandas, …) lives as long as the process: keep it out of the
    # collector, whose full passes over it stopped every request for 100-150 ms a few times a minute.
    gc.collect()
    gc.freeze()
    try:
        server.start([model])
    finally:
        prediction_log.close(budget=shutdown_seconds)


if __name__ == "__main__":
    main()
