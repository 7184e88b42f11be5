"""radimagenet: RadImageNet-style pretrained backbones for radiology, end to end.

Importing the package is cheap: heavy libraries (torch, ray, mlflow) are imported by the modules
that need them, so ``radimagenet --help`` answers fast.
"""

__version__ = "0.1.0"
