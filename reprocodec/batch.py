"""What every batch verb of the CLI shares, local (reprocodec/cli.py) or remote
(reprocodec/client/commands.py): exit statuses, where each output file goes, failure lines.

Imports nothing beyond the standard library, so the light client uses it too.
"""

from __future__ import annotations

import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_VERIFICATION = 0, 1, 2, 3


def output_path(inp: Path, out: str | Path, many: bool, suffix: str) -> Path:
    """Where the output of `inp` goes: into `out` when it is a directory (exists as one, ends
    with a slash, or several inputs share it), else `out` itself."""
    as_dir = many or str(out).endswith(("/", "\\")) or Path(out).is_dir()
    out = Path(out)
    if as_dir:
        out.mkdir(parents=True, exist_ok=True)
        return out / (Path(inp).stem + suffix)
    return out


def worse(status: int, new: int) -> int:
    """Batch exit status: verification failures (3) outrank other failures (1)."""
    if EXIT_VERIFICATION in (status, new):
        return EXIT_VERIFICATION
    return max(status, new)


def batch_summary(verb: str, total: int, failed: int) -> str:
    """The line every batch ends with, local or remote."""
    return (f"{verb}: {total - failed} of {total} input{'s' if total != 1 else ''} done"
            + (f", {failed} failed" if failed else ""))


def failure_line(message: str) -> str:
    return f"reprocodec: error: {' '.join(str(message).split())}"


def fail(message: str) -> None:
    print(failure_line(message), file=sys.stderr)
