"""MLflow's pyfunc format, owned by :mod:`radimagenet.io.tracking` (with it, the only ``mlflow``
importers): save a folder as a "models from code" pyfunc model, and the adapter that code file sets.

    save_model("out/", "pyfunc_code.py", {"backbone": "weights-and-record/"},
               inputs=[("image", "binary")], outputs=[("p_normal", "double")], input_example=df)
    set_model(load, predict)     # in the code file: MLflow's model is predict(load(artifacts), df)

No pickle: MLflow runs the (tiny) code file to get the model, which loads the safetensors weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from radimagenet.io.tracking import TrackingError


def save_model(path: str, code_file: str, artifacts: dict[str, str], *, inputs: list[tuple[str, str]],
               outputs: list[tuple[str, str]], input_example: Any, pip_requirements: list[str],
               metadata: dict[str, Any] | None = None) -> None:
    """Write a pyfunc model folder at ``path`` (it must not exist): ``code_file`` (models from code),
    ``artifacts`` (name -> local file or folder, copied under ``artifacts/``), a column signature
    (``(name, mlflow type)`` pairs) and ``input_example``. ``pip_requirements`` are given, not inferred
    (inferring loads the model in a subprocess)."""
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    signature = ModelSignature(inputs=Schema([ColSpec(t, n) for n, t in inputs]),
                               outputs=Schema([ColSpec(t, n) for n, t in outputs]))
    try:
        mlflow.pyfunc.save_model(path, python_model=code_file, artifacts=artifacts, signature=signature,
                                 input_example=input_example, pip_requirements=pip_requirements,
                                 metadata=metadata)
    except Exception as exc:  # noqa: BLE001 - MLflow raises many types; one line says which model
        raise TrackingError(f"cannot save the pyfunc model {path}: {str(exc).splitlines()[0][:300]}") from exc


def set_model(load: Callable[[dict[str, str]], Any], predict: Callable[[Any, Any], Any]) -> None:
    """Called by a models-from-code file: the pyfunc model MLflow loads runs ``load(artifacts)`` once
    (``artifacts``: name -> local path) and answers ``predict(state, model_input)``."""
    import mlflow.models
    import mlflow.pyfunc
    import pandas as pd

    def load_context(self: Any, context: Any) -> None:
        self.state = load(dict(context.artifacts))

    def predict_method(self: Any, context: Any, model_input: Any, params: Any = None) -> Any:
        return predict(self.state, model_input)

    # a DataFrame hint: MLflow then neither warns nor derives a schema from it (the logged signature rules)
    predict_method.__annotations__ = {"model_input": pd.DataFrame}
    model = type("RadImageNetModel", (mlflow.pyfunc.PythonModel,),
                 {"load_context": load_context, "predict": predict_method, "__doc__": "load once, then predict"})
    mlflow.models.set_model(model())
