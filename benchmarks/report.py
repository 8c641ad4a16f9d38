"""Write one benchmark's section of docs/performance.md, leaving the other sections as they are.

Each section starts at a line `## <heading>` and runs to the next `## ` line; re-running a benchmark
replaces its own section only.
"""

from pathlib import Path

PERFORMANCE = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
TITLE = "# Performance\n\nMeasured figures, each with the command that reproduces it. Targets come from the issues; " \
        "a figure that misses its target says so.\n"


def write_section(heading, body, path=PERFORMANCE):
    text = path.read_text() if path.exists() else TITLE
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() == f"## {heading}"), None)
    section = f"## {heading}\n\n{body.strip()}\n\n"
    if start is None:
        if not text.endswith("\n\n"):
            text = text.rstrip("\n") + "\n\n"
        text += section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        text = "".join(lines[:start]) + section + "".join(lines[end:])
    path.write_text(text)
