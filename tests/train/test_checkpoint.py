"""Checkpoints: weights, best weights, optimizer and scheduler state, state.json last."""

from __future__ import annotations

import pytest
import torch

from radimagenet.errors import ConfigError
from radimagenet.models.factory import create_model
from radimagenet.train import checkpoint


def test_checkpoint_save_load_restores_training_state(tmp_path):
    model = create_model("resnet18", 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    sched.step()
    best = {k: v.clone() + 1 for k, v in model.state_dict().items()}
    checkpoint.save(str(tmp_path), model=model, optimizer=opt, scheduler=sched, best_weights=best, state={
        "epoch": 2, "step": 30, "config": {"a": 1}, "dataset_digest": "sha256:abc", "mlflow_run_id": "r1",
        "record": {"arch": "resnet18"}, "metrics": {"val/accuracy": 0.5}, "best": {"epoch": 1, "value": 0.3}})
    model2 = create_model("resnet18", 4)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 0.5)
    state, best2 = checkpoint.load(str(tmp_path), model=model2, optimizer=opt2, scheduler=sched2,
                                   dataset_digest="sha256:abc")
    assert state["epoch"] == 2 and state["step"] == 30 and state["mlflow_run_id"] == "r1" and state["best"]["epoch"] == 1
    assert sched2.last_epoch == 1 and opt2.state_dict()["state"].keys() == opt.state_dict()["state"].keys()
    assert all(torch.equal(best[k], best2[k]) for k in best)
    assert all(torch.equal(v, model2.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(ConfigError, match="trained on dataset"):
        checkpoint.load(str(tmp_path), model=model2, dataset_digest="sha256:other")
