"""The apps' tests: the camera app (``edgevit_pi``) is imported from this checkout, as
``pip install ./apps/raspberry_pi`` would install it (``edgevit demo`` imports it by name)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
APP_DIR = REPO / "apps" / "raspberry_pi"
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))
