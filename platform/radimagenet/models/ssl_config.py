"""The settings of the self-supervised objectives (``objective``, ``ssl.*``), without torch: configs load
and ``--help`` answers without it. The networks are :mod:`radimagenet.models.ssl`."""

from __future__ import annotations

from dataclasses import dataclass

OBJECTIVES = ("supervised", "dino", "mae")


@dataclass
class SSLSection:
    """Settings of the self-supervised objectives (``ssl.*``; ignored by ``objective=supervised``)."""

    out_dim: int = 4096  # dino: prototypes
    hidden_dim: int = 2048  # dino: the projection MLP's width
    bottleneck_dim: int = 256  # dino: the L2-normalised bottleneck before the prototypes
    local_crops: int = 6  # dino: small crops (scale 0.05-0.4) besides the two global ones (0.4-1)
    local_size: int = 0  # dino: their size in pixels (0: 96/224 of data.image_size)
    teacher_momentum: float = 0.996  # dino: the teacher's EMA momentum at the start, raised to 1 by a cosine
    teacher_temp: float = 0.04
    student_temp: float = 0.1
    center_momentum: float = 0.9
    mask_ratio: float = 0.6  # mae: share of patches blanked
    mask_patch: int = 0  # mae: patch size in pixels (0: the backbone's total stride, at most image_size / 4)
    knn_k: int = 20  # validation: neighbours of the k-NN accuracy


def ssl_problems(s: SSLSection) -> list[str]:
    """What is wrong with the ``ssl`` settings (an empty list when nothing is)."""
    checks = [
        (s.out_dim >= 2 and s.hidden_dim >= 1 and s.bottleneck_dim >= 1,
         "ssl.out_dim must be >= 2 and ssl.hidden_dim, ssl.bottleneck_dim >= 1"),
        (s.local_crops >= 0, f"ssl.local_crops must be >= 0, got {s.local_crops}"),
        (s.local_size >= 0, f"ssl.local_size must be >= 0 (0: automatic), got {s.local_size}"),
        (0 <= s.teacher_momentum <= 1, f"ssl.teacher_momentum must be in [0, 1], got {s.teacher_momentum}"),
        (s.teacher_temp > 0 and s.student_temp > 0, "ssl.teacher_temp and ssl.student_temp must be > 0"),
        (0 <= s.center_momentum < 1, f"ssl.center_momentum must be in [0, 1), got {s.center_momentum}"),
        (0 < s.mask_ratio < 1, f"ssl.mask_ratio must be in (0, 1), got {s.mask_ratio}"),
        (s.mask_patch >= 0, f"ssl.mask_patch must be >= 0 (0: automatic), got {s.mask_patch}"),
        (s.knn_k >= 1, f"ssl.knn_k must be >= 1, got {s.knn_k}"),
    ]
    return [message for ok, message in checks if not ok]
