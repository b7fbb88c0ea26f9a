"""What training writes to the model registry and the drift job reads back."""

MODEL_NAME = "trip_duration"
STAGING = "staging"  # the alias the InferenceService serves
PREVIOUS = "previous"  # the version @staging held before the last promotion: what a rollback returns to
REFERENCE_ARTIFACT = "reference/reference.parquet"  # in each version's run: its serving population, for drift
REJECTED_TAG = "gate.rejected_at"  # on the registered model: when the gate last turned a challenger down
