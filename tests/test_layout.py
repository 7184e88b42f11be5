"""The source tree lives under ``platform/`` but must never shadow the stdlib ``platform`` module."""

from __future__ import annotations

import platform
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_platform_folder_is_not_a_package():
    assert not (ROOT / "platform" / "__init__.py").exists()
    assert sorted(p.name for p in (ROOT / "platform").glob("*.py")) == []


def test_import_platform_is_the_stdlib():
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    assert Path(platform.__file__).resolve().parent == stdlib
    assert platform.system() == "Linux" or sys.platform != "linux"
