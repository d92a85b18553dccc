"""``app/`` knows nothing of HTTP or Celery: read every import to keep it so."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"fastapi", "starlette", "celery", "kombu", "uvicorn", "api", "workers"}


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_app_imports_no_adapter() -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(imported_roots(p) & FORBIDDEN)
        for p in (ROOT / "app").rglob("*.py")
        if imported_roots(p) & FORBIDDEN
    }
    assert offenders == {}
