"""`make demo` (scripts/demo.py) as a new user meets it: it shows what is inside the archives,
ends with what to do next, and leaves no temporary folder or mount behind."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from support.mount import mounts_under

DEMO = Path(__file__).resolve().parent.parent / "scripts" / "demo.py"


def test_the_demo_shows_the_archives_contents_and_what_next_and_cleans_up(zm):
    r = subprocess.run([sys.executable, str(DEMO)], capture_output=True, text=True, timeout=600,
                       env=zm.env())
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    out = r.stdout
    tree = out.split("== the tree")[1].split("\n== ")[0]
    for inside in (r"v3/\n\s+group\.zip/\n\s+\S", r"deep/\n\s+\S", r"night1\.rkns/\n\s+\S"):
        assert re.search(inside, tree), f"/{inside}/ not in the tree:\n{tree}"
    assert "equal to the source: True" in out
    m = re.search(r"removed the demo's temporary folder (\S+)", out)
    assert m and not Path(m.group(1)).exists(), out[-2000:]
    assert mounts_under(m.group(1)) == []
    what_next = out.split("== what next")[1]
    assert "zipmount mount s3://BUCKET/PREFIX/" in what_next and "fsspec" in what_next, what_next
