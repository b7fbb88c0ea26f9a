"""What training writes to the model registry and the drift job reads back, and what both must agree on."""

MODEL_NAME = "trip_duration"
STAGING = "staging"  # the alias the InferenceService serves
PREVIOUS = "previous"  # the version @staging held before the last promotion: what a rollback returns to
REFERENCE_ARTIFACT = "reference/reference.parquet"  # in each version's run: its serving population, for drift
REJECTED_TAG = "gate.rejected_at"  # on the registered model: when the gate last turned a challenger down

# Retraining on production rides: training needs MIN_PRODUCTION_RIDES with an actual duration of 1-60 min on each
# side of its time split (the newest VALIDATION_SHARE validates), so the drift job starts none with fewer in all.
MIN_PRODUCTION_RIDES = 200
VALIDATION_SHARE = 0.2
MIN_RETRAIN_RIDES = round(MIN_PRODUCTION_RIDES / VALIDATION_SHARE)  # 1,000
