"""Every reject reason the ingest can write is documented in REJECT_REASONS (what `dataset inspect`
counts and the README points to)."""

from __future__ import annotations

import ast
from pathlib import Path

from radimagenet.ingest.decode import REJECT_REASONS

INGEST = Path(__file__).resolve().parents[2] / "platform" / "radimagenet" / "ingest"


def reasons_in_code() -> set[str]:
    """String reasons given to Reject(index, source, REASON, ...), Rejected(REASON, ...), row problems
    ``(REASON, detail)`` and the driver's ``"REASON: ..."`` lines."""
    found = set()
    for path in INGEST.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                args = node.args
                if node.func.id == "Reject" and len(args) >= 3 and isinstance(args[2], ast.Constant):
                    found.add(args[2].value)
                if node.func.id == "Rejected" and args and isinstance(args[0], ast.Constant):
                    found.add(args[0].value)
            if isinstance(node, ast.Tuple) and len(node.elts) == 2 and isinstance(node.elts[0], ast.Constant):
                detail = node.elts[1]  # a row problem: (REASON, "a sentence") or (REASON, f"...")
                if isinstance(detail, ast.JoinedStr) or (isinstance(detail, ast.Constant) and " " in str(detail.value)):
                    found.add(node.elts[0].value)
            if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
                head = str(node.values[0].value)
                if head.split(":")[0] in ("split_conflict",):
                    found.add(head.split(":")[0])
    return {r for r in found if isinstance(r, str) and r.replace("_", "").isalpha() and r.islower()}


def test_every_reason_is_documented():
    used = reasons_in_code()
    assert {"missing_file", "too_large", "outside_source", "decode_failed"} <= used  # the scan sees them
    assert not used - set(REJECT_REASONS), sorted(used - set(REJECT_REASONS))
