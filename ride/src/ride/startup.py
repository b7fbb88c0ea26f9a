"""What every command does before its work, and the exit statuses they share."""

from __future__ import annotations

import logging
import os
import sys

# One scheme for every command:
EXIT_OK = 0  # done; nothing to report (or not enough data to say)
EXIT_FINDING = 1  # done, and the answer is a finding: data drift (with --fail-on-drift), an alias that does not exist
EXIT_ERROR = 2  # could not do it: bad input, a service out of reach, anything unforeseen; one line on stderr
EXIT_DEGRADED = 3  # done: live error degraded (with --fail-on-degradation)


def start(quiet: tuple[str, ...] = ()) -> None:
    """Log to stderr (stdout is for the command's answer), quiet chatty libraries, and set two safe defaults."""
    # MLflow's default retries keep a user waiting minutes for an unreachable server; ~30 s is enough.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "4")
    # A progress bar off a terminal (a pod's log) is a line of control characters per update.
    if not sys.stderr.isatty():
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow imports GitPython to tag runs with a commit; the images have no git, and GitPython then prints a
    # 15-line banner on import. Quiet makes it raise nothing and say nothing: runs are simply not tagged.
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    # MLflow prints a run's URL on stdout, which is for the command's answer, and sets its loggers' level from its
    # own variable when imported (after this), not from the logging set up below.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    import pyarrow

    # pyarrow's multi-threaded CPU pool, once pandas has used it, aborts the interpreter at exit now and then
    # ("terminate called without an active exception", exit 134); one thread costs nothing here.
    pyarrow.set_cpu_count(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    for name in ("mlflow", "botocore", "aiobotocore", "urllib3", "alembic", *quiet):
        logging.getLogger(name).setLevel(logging.WARNING)


def fail(message: str, status: int = EXIT_ERROR) -> None:
    """One line on stderr, no traceback, and the exit status."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)
