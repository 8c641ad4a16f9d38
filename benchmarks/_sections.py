"""Update one `## Heading` section of a Markdown file, keeping the rest (several benchmarks share
docs/performance.md)."""

import re
from pathlib import Path

__all__ = ["update_section", "publish"]


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


def publish(path, heading, body, write=True):
    """Print a benchmark's section and, unless `write` is false, put it into `path`; returns 0 (the exit
    status of a benchmark's main)."""
    import sys
    print(body)
    if write:
        update_section(path, heading, body)
        print(f"updated {path} (## {heading})", file=sys.stderr)
    return 0
