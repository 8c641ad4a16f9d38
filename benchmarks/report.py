"""Where the benchmarks write: docs/performance.md (sections updated by `_sections.update_section`)."""

from pathlib import Path

PERFORMANCE = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
