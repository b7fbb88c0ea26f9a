"""`python -m transformer`: kserve's standard flags, plus ours (each also an environment variable)."""

import argparse
import contextlib
import logging
import warnings

import kserve
from kserve import model_server
from kserve.predictor_config import PredictorConfig
from ride.settings import ShowDefaults, add_arguments, read

from transformer.logsink import PredictionLog
from transformer.middleware import RequestIdAndBodyLimit
from transformer.model import Refused, TripDurationTransformer, refused_response
from transformer.predictor import PredictorError, error_response
from transformer.process import tune
from transformer.settings import Settings

DRAIN_SECONDS = 10  # on SIGTERM, for requests in flight; then the log's budget (both within the pod's grace period)

parser = argparse.ArgumentParser(
    prog="python -m transformer", parents=[model_server.parser], formatter_class=ShowDefaults,
    description="KServe transformer for trip-duration: validates rides (single or batch), calls the predictor over V2, "
    "returns durations with ride_id and model_version, and logs every scored ride.")  # fmt: skip
add_arguments(parser, Settings, underscores=True)
# The controller does not pass --predictor_protocol, and our predictor speaks V2; 600 s is no timeout for a ride.
parser.set_defaults(model_name="trip-duration", predictor_protocol="v2", predictor_request_timeout_seconds=10,
                    enable_grpc=False, enable_latency_logging=False)  # fmt: skip


def main() -> None:
    # kserve 0.21's V2 endpoint answers with a response class this FastAPI deprecates, warned about on the first request.
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    args, _ = parser.parse_known_args()
    if not args.predictor_host:
        parser.error("--predictor_host HOST:PORT is required (the predictor's V2 endpoint)")
    settings = read(Settings, args)
    prediction_log = PredictionLog.open(args.model_name, settings)
    model_server.app.add_middleware(RequestIdAndBodyLimit, max_body_bytes=settings.max_body_bytes)
    model_server.app.add_exception_handler(PredictorError, error_response)
    model_server.app.add_exception_handler(Refused, refused_response)
    server = kserve.ModelServer(
        http_port=args.http_port, grpc_port=args.grpc_port, enable_grpc=args.enable_grpc,
        workers=1,  # the prediction log lives in this process
        grace_period=DRAIN_SECONDS, enable_latency_logging=args.enable_latency_logging,
        predictor_config=PredictorConfig(args.predictor_host, args.predictor_protocol, args.predictor_use_ssl,
                                         args.predictor_request_timeout_seconds, args.predictor_request_retries))  # fmt: skip
    # kserve has configured its own loggers by now (its format, its level) and left the root without a handler: ours
    # write through kserve's, or their INFO lines (the version served, what the log shipped at shutdown) are lost.
    ours = logging.getLogger("transformer")
    ours.handlers, ours.propagate = logging.getLogger("kserve").handlers, False
    ours.setLevel(logging.INFO)
    ours.info("serving %s version %s", args.model_name, settings.model_version)
    tune(args.event_loop, per_request_logs=args.enable_latency_logging)
    model = TripDurationTransformer(args.model_name, settings, prediction_log)
    model_server.app.router.lifespan_context = then(model_server.app.router.lifespan_context, model.close)
    try:
        server.start([model])
    finally:
        prediction_log.close(budget=settings.prediction_log_shutdown_seconds)


def then(lifespan, cleanup):
    """The app's lifespan, then `cleanup`: uvicorn ends the lifespan once requests have drained, so the predictor's
    connections close after the last call that needs them (left open, aiohttp reports them as the process exits)."""

    @contextlib.asynccontextmanager
    async def wrapped(app):
        async with lifespan(app):
            yield
        await cleanup()

    return wrapped


if __name__ == "__main__":
    main()
