"""Generate (once) the benchmark data sets under ``.bench/data/<size>/``.

Layout of a data set directory (the nginx document root)::

    bucket/eeg.zip        zarr v2 group, ZIP_STORED (what zarr's ZipStore writes)
    bucket/many.zip       >= 10,000 small members in nested directories
    bucket/big.zip        a few large stored members for the memory check
    local/eeg.zarr/       extracted copy of eeg.zip (the floor)
    local/many/           extracted copy of many.zip
    manifest.json         parameters and facts the runner needs (sizes, offsets)

Everything is written to a temporary name first and renamed, so an interrupted
run never leaves a half-written file that a later run would take as complete.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class DataSpec:
    name: str
    channels: int
    samples: int
    chunk: int
    tiny_arrays: int
    many_dirs: tuple[int, int, int]  # d x s x f files
    big_members: int
    big_member_mib: int
    fs_hz: float = 1000.0
    seed: int = 20261126

    @property
    def many_entries(self) -> int:
        d, s, f = self.many_dirs
        return d * s * f


FULL = DataSpec(
    name="full",
    channels=16,
    samples=2_000_000,
    chunk=65536,
    tiny_arrays=200,
    many_dirs=(20, 25, 20),  # 10,000 files (+ directories)
    big_members=4,
    big_member_mib=512,  # 4 x 512 MiB = 2 GiB streamed through the mount
)

QUICK = DataSpec(
    name="quick",
    channels=4,
    samples=262_144,
    chunk=65536,
    tiny_arrays=20,
    many_dirs=(10, 10, 10),
    big_members=2,
    big_member_mib=64,
)


def eeg_signal(rng: np.random.Generator, n: int, fs: float) -> np.ndarray:
    """Filtered (1/f-ish, low-passed) noise + alpha and line-noise sines, in microvolts."""
    x = rng.standard_normal(n)
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(n, 1.0 / fs)
    h = 1.0 / np.sqrt(1.0 + (f / 5.0) ** 2)
    h[f > 100.0] *= 0.05
    y = np.fft.irfft(spec * h, n)
    y *= 20.0 / y.std()
    t = np.arange(n) / fs
    alpha = rng.uniform(8.0, 12.0)
    y += rng.uniform(5.0, 20.0) * np.sin(2 * np.pi * alpha * t + rng.uniform(0, 6.28))
    y += rng.uniform(1.0, 6.0) * np.sin(2 * np.pi * 50.0 * t)
    return y.astype(np.float32)


def _write_zarr(spec: DataSpec, path: Path) -> None:
    import zarr
    from numcodecs import Blosc

    rng = np.random.default_rng(spec.seed)
    store = zarr.DirectoryStore(str(path))
    root = zarr.group(store=store, overwrite=True)
    root.attrs.update({"title": "zipmount benchmark EEG-like recording", "fs_hz": spec.fs_hz})
    comp = Blosc(cname="zstd", clevel=5, shuffle=Blosc.SHUFFLE)
    arr = root.zeros(
        "eeg",
        shape=(spec.channels, spec.samples),
        chunks=(1, spec.chunk),
        dtype="float32",
        compressor=comp,
    )
    arr.attrs["units"] = "uV"
    for ch in range(spec.channels):
        arr[ch, :] = eeg_signal(rng, spec.samples, spec.fs_hz)
    tiny = root.create_group("tiny")
    for i in range(spec.tiny_arrays):
        a = tiny.array(f"t{i:03d}", rng.standard_normal(16), chunks=(16,), compressor=comp)
        if i % 2 == 0:
            a.attrs["index"] = i


def _zip_dir(src: Path, dest: Path, compression: int) -> None:
    tmp = dest.with_name(dest.name + ".part")
    files = sorted(p for p in src.rglob("*") if p.is_file())
    with zipfile.ZipFile(tmp, "w", compression=compression, allowZip64=True) as zf:
        for p in files:
            zf.write(p, p.relative_to(src).as_posix())
    os.replace(tmp, dest)


def _write_many(spec: DataSpec, path: Path) -> None:
    rng = np.random.default_rng(spec.seed + 1)
    d, s, f = spec.many_dirs
    for i in range(d):
        for j in range(s):
            sub = path / f"dir{i:02d}" / f"sub{j:02d}"
            sub.mkdir(parents=True, exist_ok=True)
            for k in range(f):
                n = int(rng.integers(50, 2000))
                (sub / f"file{k:03d}.txt").write_bytes(
                    (f"{i}/{j}/{k} ".encode() * (n // 8 + 1))[:n]
                )


def _write_big(spec: DataSpec, dest: Path) -> None:
    """Stored members of incompressible data (a random block repeated with a varying prefix)."""
    rng = np.random.default_rng(spec.seed + 2)
    block = rng.integers(0, 256, size=1 << 20, dtype=np.uint8).tobytes()
    tmp = dest.with_name(dest.name + ".part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for m in range(spec.big_members):
            zi = zipfile.ZipInfo(f"big/member{m}.bin", date_time=(2026, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_STORED
            with zf.open(zi, "w", force_zip64=True) as out:
                for b in range(spec.big_member_mib):
                    out.write(struct.pack("<II", m, b) + block[8:])
    os.replace(tmp, dest)


def central_directory_offset(path: Path) -> int:
    """Offset where the index starts (central directory); everything after it is index too."""
    with zipfile.ZipFile(path) as zf:
        # zipfile keeps the start of the central directory as ``start_dir``
        return int(zf.start_dir)  # type: ignore[attr-defined]


def _members(path: Path) -> dict[str, dict[str, int]]:
    with zipfile.ZipFile(path) as zf:
        return {
            zi.filename: {
                "offset": zi.header_offset,
                "compress_size": zi.compress_size,
                "file_size": zi.file_size,
            }
            for zi in zf.infolist()
        }


def _ensure_tree_and_zip(tree: Path, zip_path: Path, write: Callable[[Path], None],
                         method: int, log: Callable[[str], None]) -> None:
    """Write ``tree`` (via a temporary directory) and zip it, unless both exist already."""
    if zip_path.exists() and tree.exists():
        return
    log(f"generating {zip_path} ...")
    shutil.rmtree(tree, ignore_errors=True)
    tmp_dir = tree.with_name(tree.name + ".part")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    write(tmp_dir)
    _zip_dir(tmp_dir, zip_path, method)
    os.replace(tmp_dir, tree)


def ensure_data(spec: DataSpec, base: Path, log=print) -> dict:
    """Create the data set if missing; return the manifest."""
    root = base / spec.name
    manifest_path = root / "manifest.json"
    if manifest_path.exists():
        m = json.loads(manifest_path.read_text())
        if m.get("version") == MANIFEST_VERSION and m.get("spec") == json.loads(
            json.dumps(asdict(spec))
        ):
            return m
        log(f"data set {root} is stale, regenerating")
    bucket = root / "bucket"
    local = root / "local"
    bucket.mkdir(parents=True, exist_ok=True)
    local.mkdir(parents=True, exist_ok=True)

    t0 = time.monotonic()
    eeg_dir = local / "eeg.zarr"
    eeg_zip = bucket / "eeg.zip"
    _ensure_tree_and_zip(eeg_dir, eeg_zip, lambda d: _write_zarr(spec, d), zipfile.ZIP_STORED, log)
    many_dir = local / "many"
    many_zip = bucket / "many.zip"
    _ensure_tree_and_zip(many_dir, many_zip, lambda d: _write_many(spec, d),
                         zipfile.ZIP_DEFLATED, log)
    big_zip = bucket / "big.zip"
    if not big_zip.exists():
        log(f"generating {big_zip} ({spec.big_members} x {spec.big_member_mib} MiB) ...")
        _write_big(spec, big_zip)

    m = {
        "version": MANIFEST_VERSION,
        "spec": asdict(spec),
        "root": str(root),
        "archives": {},
    }
    for name, p in (("eeg", eeg_zip), ("many", many_zip), ("big", big_zip)):
        members = _members(p)
        m["archives"][name] = {
            "key": f"bucket/{p.name}",
            "path": str(p),
            "size": p.stat().st_size,
            "central_directory_offset": central_directory_offset(p),
            "entries": len(members),
            "members": members if name != "many" else {},
        }
    m["local"] = {"eeg": str(eeg_dir), "many": str(many_dir)}
    tmp = manifest_path.with_name("manifest.json.part")
    tmp.write_text(json.dumps(m, indent=1))
    os.replace(tmp, manifest_path)
    log(f"data set {root} ready in {time.monotonic() - t0:.1f} s")
    return m
