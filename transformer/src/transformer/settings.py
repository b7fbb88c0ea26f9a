"""Every setting of the transformer beyond kserve's own flags: its flag, its environment variable, its default."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

from ride.settings import positive, setting


@dataclass
class Settings:
    model_version: str = setting("registry version served, returned with every prediction (the SDK drops it from V2 "
                                 "responses)", "unknown", env="MODEL_VERSION")  # fmt: skip
    max_batch_size: int = setting("rides per request", 1000, env="MAX_BATCH_SIZE", type=positive(int))
    max_body_bytes: int = setting("request body limit, in bytes", 1 << 20, env="MAX_BODY_BYTES", type=positive(int))
    batch_wait_ms: float = setting("how long single-ride requests wait to share one predictor call (0: only what is "
                                   "queued)", 1.0, env="BATCH_WAIT_MS", type=positive(float, zero=True))  # fmt: skip
    max_predictor_calls: int = setting("predictor calls in flight at once, each carrying the single rides gathered",
                                       2, env="MAX_PREDICTOR_CALLS", type=positive(int))  # fmt: skip
    prediction_log_uri: str = setting("s3://bucket/prefix or a local directory; S3 endpoint and keys from AWS_*",
                                      "prediction-logs", env="PREDICTION_LOG_URI")  # fmt: skip
    prediction_log_spill_dir: str = setting("where records wait while the destination is down",
                                            os.path.join(tempfile.gettempdir(), "prediction-log-spill"),
                                            env="PREDICTION_LOG_SPILL_DIR")  # fmt: skip
    prediction_log_flush_records: int = setting("write an object every N records …", 5000,
                                                env="PREDICTION_LOG_FLUSH_RECORDS", type=positive(int))  # fmt: skip
    prediction_log_flush_seconds: float = setting("… or every T seconds", 2.0, env="PREDICTION_LOG_FLUSH_SECONDS",
                                                  type=positive(float))  # fmt: skip
    prediction_log_max_buffered: int = setting("records held in memory while the spill directory cannot take them",
                                               50_000, env="PREDICTION_LOG_MAX_BUFFERED", type=positive(int))  # fmt: skip
    prediction_log_max_spill_mb: int = setting("spill directory limit; past it and memory, the oldest records are "
                                               "dropped and counted", 512, env="PREDICTION_LOG_MAX_SPILL_MB",
                                               type=positive(int))  # fmt: skip
    prediction_log_shutdown_seconds: float = setting(
        "on SIGTERM, how long to try shipping what waits; the rest stays in the spill directory for the next start, "
        "and its number is logged", 20.0, env="PREDICTION_LOG_SHUTDOWN_SECONDS", type=positive(float))  # fmt: skip
