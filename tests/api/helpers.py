"""Shared helpers of the API tests: where the repository's files are, how to read them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
DOCS = REPO / "docs" / "api.md"
EXAMPLES = REPO / "examples"
BAD = Path(__file__).resolve().parent / "bad"


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path}: not a mapping"
    return data


def error_text(exc: ValidationError) -> str:
    """Pydantic errors as ``path: message`` lines, paths written the Kubernetes way."""
    lines = []
    for err in exc.errors():
        path = ""
        for part in err["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        lines.append(f"{path}: {err['msg']}")
    return "\n".join(lines)
