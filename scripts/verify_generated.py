"""Fail when src/workflow_eventbus/_proto is stale against proto/*.proto."""

from __future__ import annotations

import filecmp
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import genproto


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "_proto"
        genproto.generate(fresh)
        current = genproto.OUT_DIR
        cmp = filecmp.dircmp(fresh, current, ignore=["__pycache__"])
        stale = sorted(cmp.left_only + cmp.right_only + cmp.diff_files)
        if stale:
            print("generated code is stale; run `make generate` and commit:", ", ".join(stale))
            return 1
    print("generated code is up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
