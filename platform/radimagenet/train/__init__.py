"""Pretraining: typed config, the per-worker loop, checkpoints, metrics and the Ray Train launcher.

    from radimagenet.train.config import PretrainConfig
    from radimagenet.train.launch import pretrain
    result = pretrain(load_config(PretrainConfig, "pipelines/demo-pretrain.yaml"))

Nothing heavy is imported here; each submodule imports torch/ray/mlflow where it needs them.
"""
