"""The code of every registered model's MLflow pyfunc flavor ("models from code"): MLflow copies this
file into the model folder and runs it when the model is loaded; the package never imports it.

    mlflow.pyfunc.load_model("models:/NAME@candidate").predict(pd.DataFrame({"image": [png_bytes]}))

It stays two calls long: what it does lives in :mod:`radimagenet.models.serving`, so a model registered
today is served by the installed package's code.
"""

from radimagenet.io import pyfunc
from radimagenet.models import serving

pyfunc.set_model(serving.load_artifacts, serving.predict_frame)
