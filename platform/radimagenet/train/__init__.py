"""The training engine every task runs through: shared config sections, the loop (:mod:`.engine`),
where it runs (:mod:`.context`), checkpoints, and the driver side (:mod:`.launch`: MLflow run, Ray Train).

Nothing heavy is imported here; each submodule imports torch/ray/mlflow where it needs them.
"""
