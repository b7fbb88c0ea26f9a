"""`python -m tracking`: the MLflow tracking server as this system runs it.

Metadata in sqlite; artifacts written by the clients straight to S3, so that a model's URI is an s3:// directory
KServe can fetch (with proxied artifacts it would be mlflow-artifacts:/…, which KServe cannot); the server only
reads S3, for the UI's artifact views.
"""

import argparse
import os
import sys
from dataclasses import dataclass

from ride.settings import add_arguments, read, setting


@dataclass
class Settings:
    backend_store_uri: str = setting("where runs and the registry are kept", "sqlite:///mlflow.db")
    default_artifact_root: str = setting("where clients write artifacts", "s3://mlflow/")
    serve_artifacts: bool = setting("proxy artifacts instead (URIs become mlflow-artifacts:/…)", False,
                                    action="store_true")  # fmt: skip
    artifacts_destination: str | None = setting("with --serve-artifacts: where the server writes them")
    host: str = setting("address to listen on", "127.0.0.1")
    port: int = setting("port to listen on", 5000, type=int)
    workers: int = setting("server processes", 1, type=int)
    # MLflow 3 rejects Host headers it does not know (DNS rebinding): in a cluster, the Service's names.
    allowed_hosts: str | None = setting("comma-separated Host headers accepted (none: MLflow's default, localhost)")


parser = argparse.ArgumentParser(prog="python -m tracking", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
add_arguments(parser, Settings)


def main() -> None:
    s = read(Settings, parser.parse_args())
    # Background job execution costs the start a minute (~15 s without); this system runs no MLflow jobs.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    # MLflow 3.17's server imports a Starlette module that Starlette now deprecates, warned about at every start; the
    # server runs in processes MLflow starts, which read their warning filters from the environment.
    os.environ.setdefault("PYTHONWARNINGS", "ignore:starlette.middleware.wsgi is deprecated:UserWarning")
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")  # this environment's, whatever PATH says
    args = [mlflow, "server", "--backend-store-uri", s.backend_store_uri, "--host", s.host, "--port", str(s.port),
            "--workers", str(s.workers)]  # fmt: skip
    if s.serve_artifacts:
        args += ["--serve-artifacts", *(["--artifacts-destination", s.artifacts_destination] if s.artifacts_destination else [])]
    else:
        args += ["--default-artifact-root", s.default_artifact_root, "--no-serve-artifacts"]
    if s.allowed_hosts:
        args += ["--allowed-hosts", s.allowed_hosts]
    os.execvp(args[0], args)


if __name__ == "__main__":
    main()
