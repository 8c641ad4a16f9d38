"""Update one `## Heading` section of a Markdown file, keeping the rest (several benchmarks share
docs/performance.md)."""

import re
from pathlib import Path

__all__ = ["update_section"]


def update_section(path, heading, body, *, title="# Performance"):
    """Replace the section `## heading` of `path` with `body` (append it if absent)."""
    path = Path(path)
    text = path.read_text() if path.exists() else f"{title}\n"
    section = f"## {heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")
