"""The workshop's web service, as the baseline: one Flask process per worker, the MLflow pyfunc model,
one JSON file written per request. Run with gunicorn from the training environment:

    MODEL_DIR=… LOG_DIR=… gunicorn -w 2 -b 127.0.0.1:9696 --chdir bench baseline_app:app
"""

import json
import os
import uuid

import mlflow.pyfunc
import pandas as pd
from flask import Flask, jsonify, request

model = mlflow.pyfunc.load_model(os.environ["MODEL_DIR"])
log_dir = os.environ["LOG_DIR"]
version = os.environ.get("MODEL_VERSION", "unknown")
app = Flask("duration-prediction")


@app.route("/predict", methods=["POST"])
def predict():
    body = request.get_json()
    ride = body["ride"]
    features = pd.DataFrame([{
        "PULocationID": int(ride["PULocationID"]),
        "DOLocationID": int(ride["DOLocationID"]),
        "trip_distance": float(ride["trip_distance"]),
    }])  # fmt: skip
    duration = float(model.predict(features)[0])
    result = {"ride_id": body["ride_id"], "prediction": {"duration": duration}, "model_version": version}
    with open(os.path.join(log_dir, f"{uuid.uuid4().hex}.json"), "w") as f:
        json.dump({**result, "ride": ride}, f)
    return jsonify(result)
