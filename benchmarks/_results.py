"""Shared helper for benchmark scripts: replace one `## ` section of benchmarks/RESULTS.md.

Each benchmark owns one section (its heading), so scripts can be re-run in any order without
clobbering each other's results.
"""

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(heading: str, body: str) -> None:
    """Replace (or append) the section that starts with `heading` (e.g. "## CLI start-up")."""
    text = heading.rstrip() + "\n\n" + body.strip("\n") + "\n"
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if heading in old:
        head, _, rest = old.partition(heading)
        nxt = rest.find("\n## ")
        tail = rest[nxt:] if nxt >= 0 else ""
        new = head + text + tail
    else:
        new = old.rstrip("\n") + "\n\n" + text
    RESULTS.write_text(new)
