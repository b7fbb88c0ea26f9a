"""`python -m monitoring`: is the model seeing what it was validated on, and is it still as right?"""

import argparse
import os

from ride import startup
from ride.settings import add_arguments, read

from monitoring.settings import Settings

parser = argparse.ArgumentParser(
    prog="python -m monitoring",
    description="Compare the rides the model has been serving with the rides it was validated on: per-column drift "
    "on the zones, the distance and the predicted duration, with thresholds calibrated on contiguous windows of the "
    "reference; an evidently report that shows the same verdict; live error against actual durations. Each model "
    "version in the window is judged against its own reference. Prints a table, then one line of JSON.",
    epilog="Exit codes: 0 no drift and no degradation, or not enough data; 1 drift (only with --fail-on-drift); "
    "2 error; 3 live error degraded (only with --fail-on-degradation; it wins over 1). S3's endpoint and keys: "
    "AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY.",
)
add_arguments(parser, Settings)


def main() -> None:
    settings = read(Settings, parser.parse_args())
    os.environ.setdefault("DO_NOT_TRACK", "1")  # evidently's telemetry
    # alibi-detect imports Hugging Face's transformers (for its text detectors), which advises at import that no
    # PyTorch, TensorFlow or Flax is installed: TabularDrift needs none of them.
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    startup.start(quiet=("matplotlib", "evidently"))
    import warnings

    warnings.filterwarnings("ignore")
    from monitoring.inputs import InputError
    from monitoring.job import UsageError, run

    try:
        summary = run(settings)
    except (InputError, UsageError) as e:
        startup.fail(str(e))
    except Exception as e:  # S3 or MLflow out of reach, or anything unforeseen: one line, never exit 1 ("drift")
        startup.fail(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    if summary["degraded"] and settings.fail_on_degradation:
        raise SystemExit(startup.EXIT_DEGRADED)
    raise SystemExit(startup.EXIT_FINDING if summary["drift"] and settings.fail_on_drift else startup.EXIT_OK)


if __name__ == "__main__":
    main()
