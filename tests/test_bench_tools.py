"""CI-sized runs of bench tools that have no other test."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_paired_trees_compares_a_checkout_with_itself():
    """One pair, one run, the smallest sample: a line per cloud with both medians and the
    pair's ratio for encode and decode."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "paired_trees.py"), "--other", str(ROOT),
         "--pairs", "1", "--reps", "1", "--threads", "1", "camel (sample)"],
        cwd=ROOT, check=True, capture_output=True, text=True, timeout=300).stdout
    line = next(x for x in out.splitlines() if x.startswith("camel (sample)"))
    number = r"\d+\.\d\d"
    assert re.fullmatch(rf"camel \(sample\)\s+\| encode {number} -> {number} \({number}\) "
                        rf"\| decode {number} -> {number} \({number}\)", line), line
