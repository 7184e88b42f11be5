"""Self-supervised pretraining (``radimagenet pretrain objective=dino|mae``): the engine's task for the
networks of :mod:`radimagenet.models.ssl`, on the same shards, loader, checkpoints and resume as
supervised pretraining, labelled or not.

Validation watches for collapse without needing labels: ``val/embedding_std`` (the spread of the
L2-normalised embeddings of the exported backbone; near 0 when every image maps to one point) and,
when the validation images have labels, ``val/knn_accuracy`` (leave-patient-out k-NN, ``ssl.knn_k``;
:mod:`radimagenet.eval.knn`). The registered backbone is the network's ``backbone`` (the DINO teacher,
the masked-image encoder) with no head; its record says ``objective``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class SSLTask:
    """Pretraining without labels: ``loss`` is the objective's per-image loss, validation the embedding.
    ``data`` is the supervised pretraining task of the same config: its loader and data metrics are these."""

    cfg: Any  # PretrainConfig
    manifest: dict
    data: Any  # PretrainTask
    name: str = "pretrain"
    select_metric: str | None = None
    patience: int = 0
    _net: Any = None

    def loader(self, split: str, ctx: Any, *, epoch: int = 0, train: bool = False, start: int = 0) -> Any:
        return self.data.loader(split, ctx, epoch=epoch, train=train, start=start)

    def data_metrics(self) -> dict[str, float]:
        return self.data.data_metrics()

    def train_mode(self, model: Any) -> None:
        model.train()

    def build_model(self) -> tuple[Any, Any]:
        from radimagenet.models.record import make_record
        from radimagenet.models.ssl import build_ssl, pooling

        cfg, manifest = self.cfg, self.manifest
        record = make_record(cfg.model.arch, manifest, in_chans=cfg.model.in_chans, image_size=cfg.data.image_size,
                             mean=cfg.data.mean, std=cfg.data.std)
        record.classes, record.num_classes, record.objective = [], 0, cfg.objective
        record.global_pool = pooling(cfg.objective, cfg.model.arch)
        self._net = build_ssl(cfg.objective, cfg.model.arch, in_chans=cfg.model.in_chans,
                              image_size=int(cfg.data.image_size or manifest["image_size"]), settings=cfg.ssl,
                              drop_rate=cfg.model.drop_rate)
        return self._net, record

    def loss(self, outputs: Any, batch: Any) -> Any:
        return outputs.float().mean()

    def after_step(self, progress: float) -> None:
        """After each optimizer step (``progress``: the share of the run's steps done): the DINO teacher's
        EMA update (nothing for mae)."""
        if hasattr(self._net, "after_step"):
            self._net.after_step(progress)

    def outputs(self, outputs: Any, batch: Any) -> dict[str, np.ndarray]:
        labels = batch.labels.numpy()
        meta = [m or {} for m in (batch.meta or [{}] * len(batch))]
        return {"embedding": outputs.float().cpu().numpy(),
                "label": labels if labels.ndim == 1 else np.full(len(batch), -1),  # multi-hot rows: no k-NN
                "patient": np.asarray([m.get("patient") or k for m, k in zip(meta, batch.keys, strict=True)],
                                      dtype=object)}

    def metrics(self, split: str, out: Any) -> dict[str, float]:
        from radimagenet.eval.knn import embedding_std, knn_accuracy

        if not len(out):
            return {}
        emb, labels = out.arrays["embedding"], out.arrays["label"]
        metrics = {f"{split}/embedding_std": embedding_std(emb), f"{split}/n_images": float(len(out)),
                   f"{split}/n_patients": float(len(set(out.arrays["patient"])))}
        if (labels >= 0).all():
            metrics[f"{split}/knn_accuracy"] = knn_accuracy(emb, labels, out.arrays["patient"], self.cfg.ssl.knn_k)
        return metrics

    def finish(self, model: Any, record: Any, ctx: Any, selected: dict[str, float]) -> dict[str, float]:
        return {}  # the driver registers the final checkpoint's backbone
