"""Every code block of README.md runs as written, in the environment it names, against the S3 test
server: only the endpoint, the CA file, the credentials file, the config file and the mountpoints
are replaced by the test's own (bucket `eeg` holds a cohort like the README's)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import yaml
from support.archives import not_a_zip
from support.mount import cleanup, mounts_under

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"```(sh|python)\n(.*?)```", README, re.S)

# A zarr v2 group as xarray writes it (dimension names included), zipped as an .rkns would be.
_MAKE_GROUP = """
import sys, numpy as np, xarray as xr
ds = xr.Dataset({"signal": (("channel", "time"), np.random.default_rng(1).normal(size=(4, 5000))
                            .astype("float32")), "gain": ("channel", np.arange(4.0))},
                coords={"channel": np.arange(4)})
ds.to_zarr(sys.argv[1], zarr_format=2, consolidated=True, encoding={"signal": {"chunks": (1, 1000)}})
import zarr  # and the recording as an .rkns keeps it: int16, time x channels
group = zarr.open_group(sys.argv[1], mode="a", zarr_format=2)
signal = group.create_array("rkns/signals/eeg/signal", shape=(5000, 4), chunks=(1000, 4), dtype="int16")
signal[:] = np.arange(20000, dtype="int16").reshape(5000, 4)
zarr.consolidate_metadata(sys.argv[1])
"""


def _zip_dir(root: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(root).as_posix())
    return buf.getvalue()


@pytest.fixture(scope="module")
def cohort(s3, zarr3_python, tmp_path_factory):
    """s3://eeg/cohort-a/: night1.rkns, sub/night2.rkns, a broken zip and a text file."""
    work = tmp_path_factory.mktemp("readme-data")
    subprocess.run([str(zarr3_python), "-c", _MAKE_GROUP, str(work / "g")], check=True)
    data = _zip_dir(work / "g")
    s3.create_bucket("eeg")
    for key, body in {"cohort-a/night1.rkns": data, "cohort-a/sub/night2.rkns": data,
                      "cohort-a/broken.zip": not_a_zip(5), "cohort-a/notes.txt": b"notes\n"}.items():
        s3.put_bytes("eeg", key, body)
    return s3


@pytest.fixture
def place(zm, tmp_path):
    """The README's paths, made here: {README text: the test's}."""
    mnt = tmp_path / "mnt"
    for name in ("night1", "cohort-a", "lab-cohort"):
        (mnt / name).mkdir(parents=True)
    env_file = tmp_path / "zipmount.env"
    env_file.write_text(f"STORAGE_ACCESS_KEY={zm.access_key}\nSTORAGE_SECRET_KEY={zm.secret_key}\n")
    env_file.chmod(0o600)
    config = tmp_path / "lab.yaml"
    config.write_text(yaml.safe_dump({
        "storage": {"endpoint_url": zm.endpoint_url, "ca_bundle": str(zm.ca_bundle)},
        "cache": {"dir": str(tmp_path / "cfg-cache")},
        "mounts": [{"source": "s3://eeg/cohort-a/", "mountpoint": str(mnt / "lab-cohort")}]}))
    yield {"https://minio.lab:9000": zm.endpoint_url, "/etc/ssl/lab-ca.pem": str(zm.ca_bundle),
           "~/.zipmount.env": str(env_file), "/etc/zipmount/lab.yaml": str(config),
           "/mnt/": f"{mnt}/"}
    cleanup(mounts_under(tmp_path), [str(tmp_path)])


def _replace(code: str, place: dict[str, str]) -> str:
    for text, ours in place.items():
        code = code.replace(text, ours)
    return code


def _env(zm, tmp_path: Path) -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)
    return zm.env(PATH=f"{bindir}:{os.environ['PATH']}", XDG_CACHE_HOME=str(tmp_path / "xdg-cache"),
                  XDG_STATE_HOME=str(tmp_path / "xdg-state"))


def test_the_readme_has_the_blocks_this_test_runs():
    kinds = [(kind, code.splitlines()[0]) for kind, code in BLOCKS]
    assert sum(k == "python" for k, _ in kinds) == 4, kinds
    for kind, first in kinds:
        if kind == "python":
            assert re.match(r"# runs in \.venv(-zarr3)? ", first), f"a block names no venv: {first}"


def test_the_use_block_runs_as_written(zm, cohort, place, tmp_path):
    """Each command of the block, in order; the cohort holds a broken zip, which `prefetch`
    must report (exit 1, naming it) while it warms the others."""
    (code,) = [c for k, c in BLOCKS if k == "sh" and "zipmount mount" in c]
    commands = [c.strip() for c in _replace(code, place).replace("\\\n", " ").splitlines()
                if c.strip() and not c.startswith("#")]
    assert len(commands) >= 12, commands
    env = _env(zm, tmp_path)
    for command in commands:
        r = subprocess.run(["bash", "-c", command], env=env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
        said = f"$ {command}\n-> {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        assert "Traceback" not in r.stderr, said
        if command.startswith("zipmount prefetch"):
            assert r.returncode == 1 and "broken.zip: the archive shows no files" in r.stderr, said
            assert re.search(r"prefetched \d+ files, .*\(2 archives\)", r.stdout), said
        else:
            assert r.returncode == 0, said
        if command.startswith("sha256sum"):
            assert r.stdout.startswith(hashlib.sha256(cohort.get_bytes(
                "eeg", "cohort-a/sub/night2.rkns")).hexdigest()), said
        if command.startswith("python -c"):
            assert "signal (4, 5000) float32" in r.stdout, said
    assert mounts_under(tmp_path) == [], "the block's umount lines left a mount"


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_each_python_block_runs_in_the_venv_it_names(zm, cohort, place, tmp_path, zarr3_python,
                                                     index):
    code = [c for k, c in BLOCKS if k == "python"][index]
    python = zarr3_python if code.startswith("# runs in .venv-zarr3") else Path(sys.executable)
    script = tmp_path / "block.py"
    script.write_text(textwrap.dedent(_replace(code, place)))
    with contextlib.ExitStack() as stack:
        if "/mnt/cohort-a" in code:  # the training loop reads through the mount too
            stack.enter_context(zm.mounted("s3://eeg/cohort-a/",
                                           mountpoint=Path(place["/mnt/"]) / "cohort-a"))
        r = subprocess.run([str(python), str(script)], env=_env(zm, tmp_path), cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    if "Client(" in code:  # the Dask block: both archives, the broken one skipped
        assert "skipped cohort-a/broken.zip" in r.stdout or "broken.zip" in r.stdout, r.stdout
        means = re.findall(r"night\d\.rkns/signal", r.stdout)
        assert len(means) == 2, r.stdout
    if "DataLoader(" in code:  # five steps through the mount, five in process, full windows
        assert r.stdout.count("(32, 1000, 4) night1.rkns") == 10, r.stdout
