"""radimagenet: RadImageNet-style pretrained backbones for radiology, end to end.

Importing the package is cheap: heavy libraries (torch, ray, mlflow) are imported by the modules
that need them, so ``radimagenet --help`` answers fast. The notebook API::

    from radimagenet import backbones, explain, models
    model, record = backbones.load("radimagenet-demo@champion", num_classes=2)   # radimagenet.models.registry
    x = models.preprocess(grey_uint8_images, record)                             # radimagenet.data.transforms
    cams = explain.gradcam(model, x)                                             # radimagenet.eval.explain
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_ALIASES = {"backbones": "radimagenet.models.registry", "explain": "radimagenet.eval.explain"}


def __getattr__(name: str) -> Any:
    """``radimagenet.backbones`` and ``radimagenet.explain``: short names of the notebook API, imported
    on first use."""
    if name in _ALIASES:
        return importlib.import_module(_ALIASES[name])
    raise AttributeError(f"module 'radimagenet' has no attribute {name!r}")
