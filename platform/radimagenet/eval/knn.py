"""Label-free quality of an embedding: its spread (collapse) and a k-NN classifier over it.

    embedding_std(emb)                                  # ~0: collapsed; 1/sqrt(D): spread over the sphere
    knn_accuracy(emb, labels, groups, k=20)             # leave-one-group-out: no neighbour of the same patient

The k-NN vote is DINO's (Caron et al. 2021): cosine similarity of L2-normalised embeddings, the ``k``
nearest neighbours weighted by ``exp(similarity / 0.07)``. Neighbours from the query's own group (its
patient) are excluded, so images of one patient cannot vouch for each other.
"""

from __future__ import annotations

import numpy as np

TEMPERATURE = 0.07


def normalised(emb: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    emb = np.asarray(emb, dtype=np.float64)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def embedding_std(emb: np.ndarray) -> float:
    """The mean over dimensions of the standard deviation over samples of the L2-normalised embeddings."""
    if len(emb) < 2:
        return float("nan")
    return float(normalised(emb).std(axis=0).mean())


def knn_probs(train: np.ndarray, train_labels: np.ndarray, query: np.ndarray, k: int, num_classes: int,
              groups: tuple[np.ndarray, np.ndarray] | None = None, chunk: int = 1024) -> np.ndarray:
    """``[Q, num_classes]``: each ``query`` row's weighted k-NN vote share per class (label ids in
    ``[0, num_classes)``) among the ``train`` rows; ``groups=(train_groups, query_groups)``: a train row
    never votes for a query of its own group. Computed chunk by chunk (memory ``chunk x len(train)``)."""
    t, q = normalised(train), normalised(query)
    labels = np.asarray(train_labels).astype(np.int64)
    out = np.zeros((len(q), num_classes))
    for s in range(0, len(q), chunk):
        sim = q[s : s + chunk] @ t.T
        if groups is not None:
            sim = np.where(groups[1][s : s + chunk, None] == groups[0][None, :], -np.inf, sim)
        kk = min(k, sim.shape[1])
        idx = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
        top = np.take_along_axis(sim, idx, axis=1)
        weight = np.where(np.isfinite(top), np.exp((top - 1.0) / TEMPERATURE), 0.0)  # cosine <= 1: no overflow
        rows = np.repeat(np.arange(len(idx)), idx.shape[1])
        np.add.at(out[s : s + chunk], (rows, labels[idx].ravel()), weight.ravel())
    total = out.sum(1, keepdims=True)
    return np.where(total > 0, out / np.maximum(total, 1e-300), 1.0 / num_classes)


def knn_predict(train: np.ndarray, train_labels: np.ndarray, query: np.ndarray, k: int,
                groups: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """The weighted k-NN label of each ``query`` row among ``train`` rows (see :func:`knn_probs`)."""
    labels = np.asarray(train_labels)
    classes, ids = np.unique(labels, return_inverse=True)
    return classes[knn_probs(train, ids, query, k, len(classes), groups).argmax(1)]


def knn_accuracy(emb: np.ndarray, labels: np.ndarray, groups: np.ndarray, k: int = 20) -> float:
    """Leave-one-group-out k-NN accuracy within one split (NaN when fewer than 2 groups or 2 classes)."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    if len(np.unique(groups)) < 2 or len(np.unique(labels)) < 2:
        return float("nan")
    return float((knn_predict(emb, labels, emb, k, groups=(groups, groups)) == labels).mean())
