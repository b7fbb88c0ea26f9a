import os

from hypothesis import settings

# CI replays the same examples on every run, so a red build points at the change that caused it;
# FUZZ_EXAMPLES and a run without CI explore new ones.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
