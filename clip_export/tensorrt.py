"""TensorRT stage (placeholder until the convert issue lands)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def runnable_here(entry: dict[str, Any]) -> tuple[bool, str]:
    return False, "TensorRT engines are not supported yet"


def run_engine(plan: Path, inputs: np.ndarray) -> np.ndarray:
    raise NotImplementedError
