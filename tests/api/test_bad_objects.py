"""Bad objects under tests/api/bad/ are refused by the pydantic models.

Each file is one object with one defect and a ``# expect: <text>`` line: a
field path or a substring of the message the real API server answers with.
The end-to-end tests replay the same files against the kube-apiserver.  An
optional ``# pydantic: <text>`` line gives the text to find in pydantic's
error where it words the same defect differently.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from conspirator.api import load

from .helpers import BAD, error_text, load_yaml

BAD_FILES = sorted(BAD.glob("*.yaml"))


def _directive(path: Path, name: str) -> str | None:
    prefix = f"# {name}:"
    for line in path.read_text().splitlines():
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    return None


def test_at_least_ten_bad_objects_of_every_sort() -> None:
    assert len(BAD_FILES) >= 10
    kinds = {load_yaml(p)["kind"] for p in BAD_FILES}
    assert kinds == {"InferenceJob", "GPUNode", "ModelProfile"}
    reasons = " ".join((p.read_text().splitlines()[0]) for p in BAD_FILES)
    for sort in ("wrong type", "out of range", "missing", "bad enum", "CEL", "pattern"):
        assert sort in reasons, f"no bad object of the sort {sort!r}"


@pytest.mark.parametrize("path", BAD_FILES, ids=[p.stem for p in BAD_FILES])
def test_bad_object_is_refused(path: Path) -> None:
    expect = _directive(path, "expect")
    assert expect, f"{path.name}: no '# expect:' line"
    want = _directive(path, "pydantic") or expect
    with pytest.raises(ValidationError) as info:
        load(load_yaml(path))
    text = error_text(info.value)
    assert want in text, f"{path.name}: {want!r} not in:\n{text}"
