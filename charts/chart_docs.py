"""Write the values table of charts/conspirator/README.md from values.yaml's ``# --`` comments.

    python3 charts/chart_docs.py [--check]

Each documented key of values.yaml (a ``# -- text`` comment, continued by the comment lines
that follow, right above the key) becomes a row: key path, default, description.  The table
sits between the ``<!-- values:start -->`` and ``<!-- values:end -->`` markers of the README;
``make generate`` rewrites it and a test fails when it is stale.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

CHART = Path(__file__).resolve().parent / "conspirator"
START, END = "<!-- values:start -->", "<!-- values:end -->"


def rows(values_text: str) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    stack: list[str] = []
    comment: list[str] = []
    for line in values_text.splitlines():
        if not line.strip():
            comment = []
            continue
        c = re.match(r"^\s*# ?(.*)$", line)
        if c:
            text = c.group(1)
            if text.startswith("-- "):
                comment = [text[3:]]
            elif comment:
                comment.append(text)
            continue
        k = re.match(r"^(\s*)([A-Za-z]\w*):\s*(.*)$", line)
        if not k:
            continue
        depth = len(k.group(1)) // 2
        stack = [*stack[:depth], k.group(2)]
        if comment:
            out.append((".".join(stack), k.group(3) or "see values.yaml", " ".join(comment)))
        comment = []
    return out


def table(values_text: str) -> str:
    lines = ["| key | default | description |", "|---|---|---|"]
    for key, default, text in rows(values_text):
        lines.append(f"| `{key}` | `{default.replace('|', '¦')}` | {text} |")
    return "\n".join(lines)


def render(readme: str, values_text: str) -> str:
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{table(values_text)}\n{END}{tail}"


def main(argv: list[str]) -> int:
    readme_path = CHART / "README.md"
    readme = readme_path.read_text()
    new = render(readme, (CHART / "values.yaml").read_text())
    if "--check" in argv:
        if new != readme:
            print("charts/conspirator/README.md values table is stale: run make generate",
                  file=sys.stderr)
            return 1
        return 0
    readme_path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
