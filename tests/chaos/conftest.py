"""Puts this directory on sys.path, so the tests import checker.py as the module `checker`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
