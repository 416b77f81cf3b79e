"""The runtime reliability and concurrency tests share the harness in ``tests/fuzz/``
(``reliability_harness``, ``loader_worker``): it is importable from here."""

from __future__ import annotations

import sys
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parents[1] / "fuzz"
if str(FUZZ_DIR) not in sys.path:
    sys.path.insert(0, str(FUZZ_DIR))
