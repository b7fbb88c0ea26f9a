import argparse
import os
import warnings

# OpenMP estimators predicting small batches in a server on few cores spin and contend for them.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# kserve 0.21's V2 endpoint answers with a response class this FastAPI deprecates, and scikit-learn's own warning
# filters reset Python's once-per-place memory on every predict: the warning would be written on every call.
warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")

import kserve  # noqa: E402  (parses kserve's own flags from sys.argv at import)
from kserve import model_server  # noqa: E402

from transformer.sklearn_runtime.model import SKLearnModel  # noqa: E402

parser = argparse.ArgumentParser(
    prog="python -m transformer.sklearn_runtime",
    parents=[model_server.parser],
    description="Local stand-in for KServe's sklearn runtime: serves the one *.pkl|*.joblib|*.pickle in "
    "--model_dir (a local path or s3:// URI; S3 endpoint from AWS_ENDPOINT_URL) over V1 and V2.",
)
parser.add_argument("--model_dir", required=True, help="directory holding exactly one model file")
# Two kserve servers share a host locally: no gRPC unless asked for.
parser.set_defaults(enable_grpc=False)


def main() -> None:
    args, _ = parser.parse_known_args()
    model = SKLearnModel(args.model_name, args.model_dir)
    model.load()
    kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, enable_grpc=args.enable_grpc).start([model])


if __name__ == "__main__":
    main()
