"""Extra Python environments for contenders that cannot live in the project venv.

zarr-python >= 3.2 and VirtualiZarr >= 2.7 install only for Python >= 3.12 here, and zarr-python 2
(the project venv) and 3 cannot share one environment. ``ensure_venv312`` builds
``.bench/venv312`` once from pyenv's 3.12 (or ``python3.12`` on PATH) and installs each wanted
package separately, so one that does not install leaves the others usable; what failed is kept
in ``.bench/venv312/bench-install.json`` with the first line of pip's error, and the runner
reports those contenders as "not installable".

    .venv/bin/python -m bench.venvs        # build it now (the benchmark calls this itself)
"""

from __future__ import annotations

import glob
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV312 = REPO / ".bench" / "venv312"
ZARR3_VENV = REPO / ".venv-zarr3"
# each line one pip call; the modules that must then import (what the contender needs)
PACKAGES312: dict[str, tuple[list[str], list[str]]] = {
    "zarr": (["zarr>=3.2", "numcodecs", "s3fs"], ["zarr", "s3fs", "numcodecs"]),
    "virtualizarr": (["virtualizarr>=2.7", "obstore"], ["virtualizarr", "obstore"]),
}


def _python312() -> str | None:
    found = sorted(glob.glob("/root/.pyenv/versions/3.12*/bin/python3.12"))
    return found[-1] if found else shutil.which("python3.12")


def _first_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("ERROR:"):
            return ln[:300]
    return (lines[-1] if lines else "pip failed")[:300]


def ensure_venv312(log=print) -> dict[str, str | None]:
    """Build .bench/venv312 if needed; returns {package group: None if usable, else the error}."""
    status_file = VENV312 / "bench-install.json"
    if status_file.exists():
        status = json.loads(status_file.read_text())
        if set(status) == set(PACKAGES312) and not any(status.values()):
            return status  # all installed; after a failure, try again (it may have been transient)
    py = _python312()
    if py is None:
        return {k: "no Python 3.12 found (pyenv or python3.12 on PATH)" for k in PACKAGES312}
    if not (VENV312 / "bin" / "python").exists():
        log(f"building {VENV312} from {py}")
        p = subprocess.run([py, "-m", "venv", str(VENV312)], capture_output=True, text=True)
        if p.returncode != 0:
            return {k: f"venv failed: {_first_error_line(p.stderr)}" for k in PACKAGES312}
    vpy = str(VENV312 / "bin" / "python")
    status: dict[str, str | None] = {}
    for name, (reqs, mods) in PACKAGES312.items():
        log(f"venv312: pip install {' '.join(reqs)}")
        p = subprocess.run([vpy, "-m", "pip", "install", "-q", *reqs],
                           capture_output=True, text=True, timeout=1200)
        if p.returncode != 0:
            status[name] = _first_error_line(p.stderr + p.stdout)
            continue
        p = subprocess.run([vpy, "-c", "import " + ", ".join(mods)], capture_output=True, text=True)
        status[name] = None if p.returncode == 0 else _first_error_line(p.stderr)
    status_file.write_text(json.dumps(status, indent=1))
    return status


def versions(python: str, modules: list[str]) -> dict[str, str]:
    """Installed versions of ``modules`` in the environment of ``python``."""
    code = ("import json, importlib.metadata as m\nout = {}\n"
            f"for n in {modules!r}:\n"
            "    try: out[n] = m.version(n)\n"
            "    except Exception: out[n] = None\n"
            "print(json.dumps(out))")
    try:
        p = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
        return json.loads(p.stdout)
    except (OSError, ValueError, subprocess.SubprocessError):
        return {}


if __name__ == "__main__":
    st = ensure_venv312()
    print(json.dumps(st, indent=1))
    sys.exit(0 if all(v is None for v in st.values()) else 1)
