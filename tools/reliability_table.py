"""Rewrite the table of bad inputs in docs/reliability.md from the cases tests/test_reliability.py runs.

    python tools/reliability_table.py

tests/test_reliability.py::test_reliability_doc_is_current fails until this has been run after a
case was added or changed, so the doc cannot drift from what the tests check.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_reliability import DOC, doc_with_table  # noqa: E402


def main() -> None:
    DOC.write_text(doc_with_table(DOC.read_text()))
    print(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
