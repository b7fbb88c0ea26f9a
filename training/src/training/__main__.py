"""`python -m training`: train, storage-uri, rollback, render-isvc, deploy."""

import argparse
import json

from ride import startup
from ride.settings import add_arguments, read

from training.settings import IsvcSettings, RegistrySettings, TrainSettings

SOURCES = ("SRC is a local path, an http(s) URL, an s3:// URI (parquet, csv or csv.gz), or a month YYYY-MM: "
           "$DATA_DIR/green_tripdata_YYYY-MM.parquet when present, else TLC's URL.")  # fmt: skip
COMMANDS = {  # name: (settings, one line, what it does)
    "train": (TrainSettings, "train, log to MLflow, register, and move the alias through the fair gate",
              "Train on one month and validate on another (--train-data, --val-data), or on the rides the model "
              "served in a window joined with their actual durations (--production-rides, --actuals): the older part "
              "trains, the newest validates. Log to MLflow, register, and move the alias when the fair gate passes: "
              "the alias holder is re-scored on the same validation rides and must be beaten by --gate-margin; "
              "@previous then keeps the version replaced. Last stdout line: JSON."),
    "storage-uri": (RegistrySettings, "resolve model@alias to the S3 directory holding its model file",
                    "Resolve the alias to JSON {run_id, version, source}: source is the directory holding the one "
                    ".pkl, as KServe's storageUri wants it. Exit 1 when the model or the alias does not exist."),
    "rollback": (RegistrySettings, "point the alias back at @previous (and @previous at what it held)",
                 "Swap the alias and @previous, so that rolling back twice returns to where you were; `deploy` then "
                 "serves it. Last stdout line: JSON {version, previous, alias, storage_uri}."),
    "render-isvc": (IsvcSettings, "print the InferenceService YAML for a model version",
                    "Print the InferenceService for --storage-uri/--model-version, or for the alias's version."),
    "deploy": (IsvcSettings, "apply the InferenceService and wait until it has rolled out",
               "Server-side apply the InferenceService (in-cluster credentials, else ~/.kube/config), then wait until "
               "its predictor and transformer Deployments run this render and it is Ready."),
}  # fmt: skip

parser = argparse.ArgumentParser(prog="python -m training", epilog="Exit codes: 0 done; 1 the registry does not hold "
                                 "what was asked; 2 an error, in one line.",  # fmt: skip
                                 description="Train the NYC green-taxi trip-duration model, track it, register it, serve it.")
commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
for name, (settings, summary, description) in COMMANDS.items():
    add_arguments(commands.add_parser(name, help=summary, description=description, epilog=SOURCES), settings)


def main() -> None:
    args = parser.parse_args()
    settings = read(COMMANDS[args.command][0], args)
    startup.start()
    from training import commands as run

    result = run.guarded(args.command, settings)
    if result is not None:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
