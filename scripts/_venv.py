"""Run the calling script with the project's interpreter.

The scripts here import the project's dependencies (numpy, httpx, torch), which ``make setup``
installs into ``.venv`` only; their ``#!/usr/bin/env python`` finds whatever ``python`` is first on
the PATH. :func:`ensure` re-executes the script with ``.venv/bin/python`` when it runs under another
interpreter and the venv exists, so ``scripts/run-studies all`` works as RESULTS.md writes it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

VENV = Path(__file__).resolve().parents[1] / ".venv"


def ensure() -> None:
    """Replace this process with the same command under ``.venv/bin/python``, unless already there."""
    python = VENV / "bin" / "python"
    if python.exists() and Path(sys.prefix).resolve() != VENV.resolve():
        os.execv(str(python), [str(python), os.path.abspath(sys.argv[0]), *sys.argv[1:]])
