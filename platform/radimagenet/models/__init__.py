"""Models: the record that travels with them (:mod:`.record`), timm creation (:mod:`.factory`),
safetensors weights (:mod:`.weights`), freezing (:mod:`.freeze`), the registry API (:mod:`.registry`)
and a model folder on disk (:mod:`.bundle`), the U-Net (:mod:`.unet`); using a model on new files
(:mod:`.inference`, :mod:`.predict`), its MLflow pyfunc flavor (:mod:`.serving`) and exports
(:mod:`.export`)."""

from __future__ import annotations

from typing import Any


def preprocess(images: Any, record: Any) -> Any:
    """Grey images -> the normalised batch a model with ``record`` expects: the evaluation loader's own
    code path, :func:`radimagenet.data.transforms.preprocess` (kept here for notebooks)."""
    from radimagenet.data.transforms import preprocess as transform

    return transform(images, record)
