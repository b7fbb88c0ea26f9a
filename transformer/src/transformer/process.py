"""How the transformer's one process runs, beyond what kserve sets up: each choice was measured (see bench/)."""

import asyncio
import gc
import logging

import uvloop


def tune(event_loop: str, per_request_logs: bool) -> None:
    if not per_request_logs:  # the prediction log already holds each ride's latency and request id
        for logger in ("kserve.trace", "uvicorn.access"):
            logging.getLogger(logger).setLevel(logging.WARNING)
    # What is loaded by now lives as long as the process: out of the collector, whose passes stalled requests 100+ ms.
    gc.collect()
    gc.freeze()
    if event_loop != "asyncio":  # kserve's one-process server runs asyncio's own loop, whatever uvicorn is told
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        asyncio.set_event_loop(asyncio.new_event_loop())  # kserve configures "the current loop" before it runs one
