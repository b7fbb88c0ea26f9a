"""The trip-duration model: gradient boosting over zone categories and distance."""

from __future__ import annotations

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OrdinalEncoder

from ride import ZONE_COLUMNS

HYPERPARAMETERS = {
    "learning_rate": 0.1,
    "max_iter": 300,
    "max_leaf_nodes": 31,
    "early_stopping": True,  # on a slice of the training month, never the validation month
    "validation_fraction": 0.1,
    "random_state": 0,
}


def build_pipeline(**overrides) -> Pipeline:
    """A DataFrame of FEATURES in, minutes out. Zones unseen in training encode as missing, not an error."""
    zones = OrdinalEncoder(
        handle_unknown="use_encoded_value",
        unknown_value=np.nan,
        encoded_missing_value=np.nan,
        max_categories=250,  # HistGradientBoosting takes at most 255 categories per feature
    )
    prep = ColumnTransformer(
        [("zones", zones, list(ZONE_COLUMNS)), ("distance", "passthrough", ["trip_distance"])],
        verbose_feature_names_out=False,
    )
    regressor = HistGradientBoostingRegressor(
        categorical_features=[0, 1], **{**HYPERPARAMETERS, **overrides}
    )
    return Pipeline([("prep", prep), ("regressor", regressor)])


def rmse(y_true, y_pred) -> float:
    return float(np.sqrt(np.mean((np.asarray(y_true) - np.asarray(y_pred)) ** 2)))


def mae(y_true, y_pred) -> float:
    return float(np.mean(np.abs(np.asarray(y_true) - np.asarray(y_pred))))
