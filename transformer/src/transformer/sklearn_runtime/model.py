from __future__ import annotations

from pathlib import Path

import joblib
from kserve import Model
from kserve.errors import InferenceError, ModelMissingError
from kserve.utils.utils import get_predict_input, get_predict_response
from kserve_storage import Storage

MODEL_EXTENSIONS = (".joblib", ".pkl", ".pickle")


class SKLearnModel(Model):
    def __init__(self, name: str, model_dir: str):
        super().__init__(name)
        self.model_dir = model_dir
        self._model = None

    def load(self) -> bool:
        local = Path(Storage.download(self.model_dir))
        files = sorted(p for p in local.iterdir() if p.suffix in MODEL_EXTENSIONS)
        if not files:
            raise ModelMissingError(str(local))
        if len(files) > 1:
            raise RuntimeError(f"more than one model file in {self.model_dir}: {[f.name for f in files]}")
        self._model = joblib.load(files[0])
        self.ready = True
        return self.ready

    def predict(self, payload, headers=None):
        instances = get_predict_input(payload)
        try:
            result = self._model.predict(instances)
        except Exception as e:
            raise InferenceError(str(e)) from e
        return get_predict_response(payload, result, self.name)
