"""Deterministic sample archives for the end-to-end tests.

Every generator returns the zip bytes plus what a correct mount must show, computed by reading
the archive back with Python's own `zipfile` (files, directories, modes) or, for the zarr
archives, the numpy arrays and attributes that were written.
"""

from __future__ import annotations

import gzip
import io
import json
import stat
import struct
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

FIXED_DATE = (2024, 5, 17, 12, 30, 42)


# --------------------------------------------------------------------------------------------
# expected-content helpers
# --------------------------------------------------------------------------------------------
@dataclass
class ArchiveContents:
    """What a mount of an archive must show."""

    data: bytes  # the zip file itself
    files: dict[str, bytes]  # member path -> content, as zipfile extracts it
    dirs: set[str]  # every directory (explicit and implied), '' excluded
    modes: dict[str, int]  # path -> expected permission bits of files and dirs
    explicit_dirs: bool = False
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # zarr archives only
    attrs: dict[str, dict] = field(default_factory=dict)  # zarr archives only: node -> attrs

    def subtree(self, root: str) -> ArchiveContents:
        """The contents as seen with --root ROOT (paths relative to ROOT)."""
        pre = root.strip("/") + "/"
        files = {k[len(pre) :]: v for k, v in self.files.items() if k.startswith(pre)}
        dirs = {d[len(pre) :] for d in self.dirs if d.startswith(pre)}
        modes = {k[len(pre) :]: v for k, v in self.modes.items() if k.startswith(pre)}
        arrays = {k[len(pre) :]: v for k, v in self.arrays.items() if k.startswith(pre)}
        attrs = {k[len(pre) :]: v for k, v in self.attrs.items() if k.startswith(pre)}
        if root.strip("/") in self.attrs:
            attrs[""] = self.attrs[root.strip("/")]
        return ArchiveContents(
            data=self.data,
            files=files,
            dirs=dirs,
            modes=modes,
            explicit_dirs=self.explicit_dirs,
            arrays=arrays,
            attrs=attrs,
        )

    @property
    def total_file_bytes(self) -> int:
        return sum(len(v) for v in self.files.values())

    def children(self, directory: str = "") -> dict[str, int | None]:
        """Immediate children of DIRECTORY: name -> size (None for directories)."""
        d = directory.strip("/")
        out: dict[str, int | None] = {}
        for f, content in self.files.items():
            parent = str(PurePosixPath(f).parent)
            if (parent == "." and d == "") or parent == d:
                out[PurePosixPath(f).name] = len(content)
        for sub in self.dirs:
            parent = str(PurePosixPath(sub).parent)
            if (parent == "." and d == "") or parent == d:
                out[PurePosixPath(sub).name] = None
        return out


def expected_from_zip(data: bytes) -> ArchiveContents:
    """Read DATA with zipfile and derive what the mount must show.

    Entries with a unix mode show its permission bits (setuid and setgid dropped); others,
    and implied directories, 0o644 for files and 0o755 for directories (as ``unzip`` gives)."""
    files: dict[str, bytes] = {}
    dirs: set[str] = set()
    modes: dict[str, int] = {}
    explicit = False
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            name = info.filename
            unix_mode = info.external_attr >> 16 if info.create_system == 3 else 0
            default = 0o755 if info.is_dir() else 0o644
            mode = unix_mode & 0o1777 if unix_mode else default
            if info.is_dir():
                explicit = True
                dirs.add(name.rstrip("/"))
                modes[name.rstrip("/")] = mode
                continue
            files[name] = zf.read(info)
            modes[name] = mode
    for name in files:
        for parent in PurePosixPath(name).parents:
            if str(parent) != ".":
                dirs.add(str(parent))
    for d in dirs:
        modes.setdefault(d, 0o755)
    return ArchiveContents(data=data, files=files, dirs=dirs, modes=modes, explicit_dirs=explicit)


def _zinfo(name: str, compress: int, mode: int = 0o644) -> zipfile.ZipInfo:
    zi = zipfile.ZipInfo(name, date_time=FIXED_DATE)
    zi.create_system = 3
    zi.compress_type = compress
    if name.endswith("/"):
        zi.external_attr = ((stat.S_IFDIR | 0o755) << 16) | 0x10
    else:
        zi.external_attr = (stat.S_IFREG | mode) << 16
    return zi


# --------------------------------------------------------------------------------------------
# (c)/(d) generic archives
# --------------------------------------------------------------------------------------------
_WORDS = [
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
    "lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon", "phi",
    "chi", "psi", "omega", "zip", "mount", "fuse", "object", "storage", "range", "request",
    "chunk",
]


def _text(rng: np.random.Generator, nbytes: int) -> bytes:
    words = rng.choice(_WORDS, size=nbytes // 5 + 16)
    lines = []
    for i in range(0, len(words), 12):
        lines.append(" ".join(words[i : i + 12]))
    return ("\n".join(lines).encode())[:nbytes]


def generic_archive(
    seed: int = 1,
    *,
    compression: str = "mixed",
    explicit_dirs: bool = False,
    big: bool = True,
) -> ArchiveContents:
    """A general-purpose archive.

    compression: "stored" (every member ZIP_STORED) or "mixed" (text deflated, binaries stored,
    the big text deflated so reads have to seek inside a deflate stream).
    explicit_dirs: write directory entries ("dir/") or leave every directory implied.
    big: include ~3 MB random binary and ~2 MB text members.
    """
    rng = np.random.default_rng(seed)
    D = zipfile.ZIP_DEFLATED
    S = zipfile.ZIP_STORED
    members: list[tuple[str, bytes, int, int]] = [  # name, data, compress (mixed), mode
        ("README.txt", _text(rng, 3000), D, 0o644),
        ("empty.dat", b"", S, 0o644),
        ("docs/index.html", b"<html><body>" + _text(rng, 5000) + b"</body></html>\n", D, 0o644),
        ("docs/guide/intro.md", _text(rng, 12000), D, 0o644),
        ("docs/guide/chapter 2.md", _text(rng, 700), D, 0o644),
        ("bin/run.sh", b"#!/bin/sh\necho hello from zip\n", D, 0o755),
        ("data/small.bin", rng.integers(0, 256, 4097, dtype=np.uint8).tobytes(), S, 0o600),
        ("données/résumé.txt", "Résumé — ünïcödé ✓\n".encode() * 40, D, 0o644),
        ("日本語/テスト.txt", "こんにちは世界\n".encode() * 100, D, 0o644),
        ("emoji 🎉.txt", "party 🎉\n".encode() * 3, S, 0o644),
        ("deep/a/b/c/d/e/leaf.txt", b"leaf\n", D, 0o644),
        ("hidden/.dotfile", b"dot\n", S, 0o644),
    ]
    if big:
        members.append(
            ("data/big.bin", rng.integers(0, 256, 3 * 1024 * 1024 + 123, dtype=np.uint8).tobytes(),
             S, 0o644)
        )
        members.append(("data/big.txt", _text(rng, 2 * 1024 * 1024 + 77), D, 0o644))

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        written_dirs: set[str] = set()
        for name, data, comp, mode in members:
            if explicit_dirs:
                parents = [str(p) for p in PurePosixPath(name).parents if str(p) != "."]
                for parent in reversed(parents):
                    if parent not in written_dirs:
                        written_dirs.add(parent)
                        zf.writestr(_zinfo(parent + "/", S), b"")
            c = S if compression == "stored" else comp
            zf.writestr(_zinfo(name, c, mode), data)
        if explicit_dirs:
            # an explicit directory with nothing in it
            zf.writestr(_zinfo("empty-dir/", S), b"")
    return expected_from_zip(buf.getvalue())


# --------------------------------------------------------------------------------------------
# (a) RKNS-like zarr v2 group, zipped with ZIP_STORED the way zarr.ZipStore writes it
# --------------------------------------------------------------------------------------------
def _signal(rng: np.random.Generator, n_ch: int, n: int) -> np.ndarray:
    t = np.arange(n, dtype=np.float64) / 256.0
    freqs = rng.uniform(1, 40, size=(n_ch, 1))
    sig = np.sin(2 * np.pi * freqs * t) * rng.uniform(10, 100, size=(n_ch, 1))
    sig += rng.normal(0, 5, size=(n_ch, n))
    return sig.astype(np.float32)


def rkns_v2_archive(
    seed: int = 7,
    *,
    n_channels: int = 4,
    n_samples: int = 20000,
    n_tiny: int = 24,
    nested_chunks: bool = False,
    consolidated: bool = True,
) -> ArchiveContents:
    """A zarr-v2 group shaped like an RKNS recording, written through zarr.ZipStore (ZIP_STORED).

    Layout::

        .zattrs  {format: rkns, ...}
        signals/eeg/data        float32 (n_channels, n_samples), Blosc zstd chunks (1, 4096)
        signals/ecg/data        float32 (1, n_samples // 2)
        signals/sparse          float32 (4, 8192), most chunks never written (fill value)
        annotations/onset       float64 (17,)     annotations/code int16 (17,)
        metadata/chNN/{gain,offset}  tiny arrays, n_tiny of them
    """
    import numcodecs
    import zarr

    assert zarr.__version__.startswith("2."), "rkns_v2_archive needs zarr-python 2"
    rng = np.random.default_rng(seed)
    blosc = numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.BITSHUFFLE)
    sep = "/" if nested_chunks else "."
    arrays: dict[str, np.ndarray] = {}
    attrs: dict[str, dict] = {}

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rec.zip"
        store = zarr.ZipStore(str(path), mode="w")  # ZIP_STORED by default
        try:
            root = zarr.group(store=store)
            attrs[""] = {"format": "rkns", "version": "0.4", "subject": f"S{seed:03d}"}
            root.attrs.update(attrs[""])

            def put(name: str, data: np.ndarray, **kw) -> None:
                kw.setdefault("compressor", blosc)
                arr = root.create_dataset(
                    name, shape=data.shape, dtype=data.dtype, dimension_separator=sep, **kw
                )
                arr[...] = data
                arrays[name] = data

            sig = root.create_group("signals")
            attrs["signals"] = {"sampling_rate_hz": 256.0}
            sig.attrs.update(attrs["signals"])
            put("signals/eeg/data", _signal(rng, n_channels, n_samples), chunks=(1, 4096))
            attrs["signals/eeg"] = {"channels": [f"EEG{i}" for i in range(n_channels)]}
            root["signals/eeg"].attrs.update(attrs["signals/eeg"])
            put("signals/ecg/data", _signal(rng, 1, n_samples // 2), chunks=(1, 4096))

            sparse = np.zeros((4, 8192), dtype=np.float32)
            sparse[1, 2048:4096] = rng.normal(size=2048).astype(np.float32)
            sparse[3, :100] = 1.5
            # Only two chunks are ever written; the others read as the fill value (ENOENT).
            sp = root.create_dataset(
                "signals/sparse", shape=sparse.shape, dtype=sparse.dtype, chunks=(1, 2048),
                fill_value=0.0, compressor=blosc, dimension_separator=sep,
            )
            sp[1, 2048:4096] = sparse[1, 2048:4096]
            sp[3, 0:2048] = sparse[3, 0:2048]
            arrays["signals/sparse"] = sparse

            put("annotations/onset", np.sort(rng.uniform(0, 78, 17)), chunks=(17,))
            put("annotations/code", rng.integers(-5, 300, 17).astype(np.int16), chunks=(8,))
            for i in range(n_tiny):
                put(f"metadata/ch{i:02d}/gain", np.array([rng.uniform(0.5, 2)]), chunks=(1,),
                    compressor=None)
                put(f"metadata/ch{i:02d}/offset", np.array([i], dtype=np.int32), chunks=(1,))
            if consolidated:
                zarr.consolidate_metadata(store)
        finally:
            store.close()
        data = path.read_bytes()

    contents = expected_from_zip(data)
    contents.arrays = arrays
    contents.attrs = attrs
    return contents


# --------------------------------------------------------------------------------------------
# (b) zarr v3 group, metadata and chunks written by hand (readable by zarr-python 3)
# --------------------------------------------------------------------------------------------
def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC32C[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _v3_array_meta(shape, chunks, dtype: str, fill, codecs, attributes=None) -> dict:
    return {
        "zarr_format": 3,
        "node_type": "array",
        "shape": list(shape),
        "data_type": dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": fill,
        "codecs": codecs,
        "attributes": attributes or {},
    }


def _iter_chunks(data: np.ndarray, chunks: tuple[int, ...], fill):
    """Yield (chunk index tuple, full-size chunk array padded with FILL)."""
    grid = [-(-s // c) for s, c in zip(data.shape, chunks, strict=True)]
    for idx in np.ndindex(*grid):
        sl = tuple(
            slice(i * c, min((i + 1) * c, s))
            for i, c, s in zip(idx, chunks, data.shape, strict=True)
        )
        block = np.full(chunks, fill, dtype=data.dtype)
        part = data[sl]
        block[tuple(slice(0, n) for n in part.shape)] = part
        yield idx, block


_BYTES_LE = {"name": "bytes", "configuration": {"endian": "little"}}


def zarr_v3_archive(seed: int = 11) -> ArchiveContents:
    """A zarr v3 group zip: plain `bytes` chunks, gzip chunks, a sharded array (with an empty
    inner chunk and a missing shard), nested groups and tiny arrays. Chunks ZIP_STORED, metadata
    deflated."""
    rng = np.random.default_rng(seed)
    entries: dict[str, tuple[bytes, int]] = {}
    arrays: dict[str, np.ndarray] = {}
    attrs: dict[str, dict] = {}
    S, D = zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED

    def group(path: str, attributes: dict) -> None:
        attrs[path] = attributes
        meta = {"zarr_format": 3, "node_type": "group", "attributes": attributes}
        key = f"{path}/zarr.json" if path else "zarr.json"
        entries[key] = (json.dumps(meta, indent=2).encode(), D)

    def array(path: str, data: np.ndarray, chunks, dtype: str, fill, codecs, encode) -> None:
        arrays[path] = data
        entries[f"{path}/zarr.json"] = (
            json.dumps(_v3_array_meta(data.shape, chunks, dtype, fill, codecs), indent=2).encode(),
            D,
        )
        for idx, block in _iter_chunks(data, chunks, fill):
            payload = encode(block)
            if payload is None:
                continue  # chunk left out: reads as fill value
            entries[f"{path}/c/" + "/".join(map(str, idx))] = (payload, S)

    group("", {"format": "rkns", "zarr": 3, "seed": seed})
    group("raw", {"kind": "raw signals"})
    sig = _signal(rng, 3, 10000)
    array("raw/signal", sig, (1, 4096), "float32", 0.0, [_BYTES_LE],
          lambda b: b.astype("<f4").tobytes())

    counts = rng.integers(-(2**20), 2**20, size=(5000,)).astype(np.int32)
    array(
        "raw/counts", counts, (1024,), "int32", 0,
        [_BYTES_LE, {"name": "gzip", "configuration": {"level": 5}}],
        lambda b: gzip.compress(b.astype("<i4").tobytes(), compresslevel=5, mtime=0),
    )

    # Sharded: shards (32, 64) of inner chunks (8, 16); shard (1, *) is never written.
    sh = rng.normal(size=(64, 128)).astype(np.float32)
    sh[8:16, 16:32] = 0.0  # one all-fill inner chunk -> recorded as missing in the index
    sh[32:64, 64:128] = 0.0  # shard (1, 1) fully empty -> object not written
    inner = (8, 16)

    def encode_shard(block: np.ndarray) -> bytes | None:
        n_inner = [s // c for s, c in zip(block.shape, inner, strict=True)]
        body = b""
        index = []
        for idx in np.ndindex(*n_inner):
            sl = tuple(slice(i * c, (i + 1) * c) for i, c in zip(idx, inner, strict=True))
            chunk = block[sl]
            if not chunk.any():
                index.append((2**64 - 1, 2**64 - 1))
                continue
            raw = chunk.astype("<f4").tobytes()
            index.append((len(body), len(raw)))
            body += raw
        if not body:
            return None
        idx_bytes = b"".join(struct.pack("<QQ", o, n) for o, n in index)
        return body + idx_bytes + struct.pack("<I", crc32c(idx_bytes))

    group("sharded", {})
    array(
        "sharded/x", sh, (32, 64), "float32", 0.0,
        [{
            "name": "sharding_indexed",
            "configuration": {
                "chunk_shape": list(inner),
                "codecs": [_BYTES_LE],
                "index_codecs": [_BYTES_LE, {"name": "crc32c"}],
                "index_location": "end",
            },
        }],
        encode_shard,
    )

    group("meta", {"note": "tiny arrays"})
    for i in range(12):
        a = np.array([i * 1.25, -i], dtype=np.float64)
        array(f"meta/t{i:02d}", a, (2,), "float64", 0.0, [_BYTES_LE],
              lambda b: b.astype("<f8").tobytes())

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in sorted(entries):
            payload, comp = entries[name]
            zf.writestr(_zinfo(name, comp), payload)
    contents = expected_from_zip(buf.getvalue())
    contents.arrays = arrays
    contents.attrs = attrs
    return contents


def save_expected_npz(contents: ArchiveContents, path: Path) -> Path:
    """Write the expected arrays (key = array path) and attrs (JSON under '__attrs__')."""
    payload = {k: v for k, v in contents.arrays.items()}
    payload["__attrs__"] = np.array(json.dumps(contents.attrs))
    np.savez(path, **payload)
    return path


def not_a_zip(seed: int = 3) -> bytes:
    rng = np.random.default_rng(seed)
    return b"this is not a zip archive\n" + rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()


def truncated_zip(contents: ArchiveContents) -> bytes:
    """The first half of a real archive: the central directory is gone."""
    return contents.data[: len(contents.data) // 2]
