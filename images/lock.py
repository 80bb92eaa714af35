"""Pin the images' dependencies: ``python -P images/lock.py`` writes images/constraints.txt.

Both image builds (images/Dockerfile and e2e/conspirator_e2e/images.py) install pyproject's
dependencies with ``-c images/constraints.txt``, so a Docker-built and a locally built image
carry the same versions.  pip resolves the list for the running interpreter (``pip install
--dry-run --report``) without installing anything; rerun it to move the pins, then rebuild.
A test checks that every pin satisfies pyproject.toml and that every dependency is pinned.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "images" / "constraints.txt"
HEADER = """\
# The images' dependency versions (images/lock.py; both image builds install with -c).
# Resolved for CPython {python} on linux x86_64; regenerate with: python -P images/lock.py
"""


def resolve() -> list[tuple[str, str]]:
    with (REPO / "pyproject.toml").open("rb") as f:
        deps = [str(d) for d in tomllib.load(f)["project"]["dependencies"]]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--dry-run",
                        "--ignore-installed", "--disable-pip-version-check",
                        "--report", str(report), *deps], check=True)
        data = json.loads(report.read_text())
    pins = {(i["metadata"]["name"].lower().replace("_", "-"), i["metadata"]["version"])
            for i in data["install"]}
    return sorted(pins)


def main() -> int:
    pins = resolve()
    python = ".".join(map(str, sys.version_info[:3]))
    OUT.write_text(HEADER.format(python=python) + "".join(f"{n}=={v}\n" for n, v in pins))
    print(f"{OUT.relative_to(REPO)}: {len(pins)} pins")
    return 0


if __name__ == "__main__":
    sys.exit(main())
