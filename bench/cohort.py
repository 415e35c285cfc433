"""The cohort: many small recordings under one prefix, and its static listing (issue 11's sampler).

Layout under the data set directory (the nginx root)::

    cohort/recs/r0000.zip ... r1999.zip   zarr v2 groups, ZIP_STORED, array ``eeg``
    cohort/manifest.json                  spec + each recording's chunk sizes
    _list/cohort.xml                      a ListObjectsV2 answer for ``s3://cohort/recs/``,
                                          written at every run (ETags follow nginx's scheme)

nginx does not list; ``LIST_LOCATION`` makes it answer every request for the bucket itself
(``GET /cohort?list-type=2&prefix=recs/...``) with that XML. Objects are served as files.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from bench.datagen import eeg_signal

BUCKET = "cohort"
PREFIX = "recs/"
LIST_LOCATION = """
        location ~ ^/cohort/?$ {
            default_type application/xml;
            rewrite ^ /_list/cohort.xml break;
        }
"""


@dataclass(frozen=True)
class CohortSpec:
    recordings: int
    channels: int = 2
    samples: int = 65536
    chunk: int = 16384
    seed: int = 20261201


COHORT_FULL = CohortSpec(recordings=2000)
COHORT_QUICK = CohortSpec(recordings=100)


def key(i: int) -> str:
    return f"{PREFIX}r{i:04d}.zip"


def ensure_cohort(spec: CohortSpec, root: Path, log=print) -> dict:
    """Generate the recordings once (deterministic); return the cohort manifest."""
    import zarr
    from numcodecs import Blosc

    base = root / BUCKET
    manifest_path = base / "manifest.json"
    if manifest_path.exists():
        m = json.loads(manifest_path.read_text())
        if m.get("spec") == asdict(spec):
            return m
    log(f"generating the cohort: {spec.recordings} recordings under {base / PREFIX} ...")
    t0 = time.monotonic()
    (base / PREFIX).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    pool = eeg_signal(rng, 1 << 22, 1000.0)  # windows of one long signal: distinct, EEG-like
    comp = Blosc(cname="zstd", clevel=5, shuffle=Blosc.SHUFFLE)
    chunks: dict[str, dict[str, int]] = {}
    for i in range(spec.recordings):
        dest = base / key(i)
        tmp = dest.with_name(dest.name + ".part")
        store = zarr.ZipStore(str(tmp), mode="w")
        g = zarr.group(store=store)
        g.attrs["recording"] = i
        a = g.zeros("eeg", shape=(spec.channels, spec.samples), chunks=(1, spec.chunk),
                    dtype="float32", compressor=comp)
        for ch in range(spec.channels):
            off = int(rng.integers(0, pool.size - spec.samples))
            a[ch, :] = pool[off:off + spec.samples]
        store.close()
        os.replace(tmp, dest)
        with zipfile.ZipFile(dest) as zf:
            chunks[f"r{i:04d}"] = {zi.filename: zi.compress_size for zi in zf.infolist()
                                   if zi.filename.startswith("eeg/") and "/." not in zi.filename}
    m = {"spec": asdict(spec), "chunks": chunks}
    tmp = manifest_path.with_name("manifest.json.part")
    tmp.write_text(json.dumps(m))
    os.replace(tmp, manifest_path)
    log(f"cohort ready in {time.monotonic() - t0:.1f} s")
    return m


def nginx_etag(st: os.stat_result) -> str:
    """The ETag nginx sends for a static file: hex mtime and hex size."""
    return f'"{int(st.st_mtime):x}-{st.st_size:x}"'


def listing_xml(bucket: str, prefix: str, objects: list[tuple[str, Path]]) -> str:
    """A ListObjectsV2 answer naming ``objects`` (key, local file), with the size and ETag nginx
    serves for each file."""
    items = []
    for name, path in objects:
        st = path.stat()
        mtime = dt.datetime.fromtimestamp(int(st.st_mtime), dt.timezone.utc)
        items.append(
            f"<Contents><Key>{escape(name)}</Key>"
            f"<LastModified>{mtime.strftime('%Y-%m-%dT%H:%M:%S.000Z')}</LastModified>"
            f"<ETag>{escape(nginx_etag(st))}</ETag><Size>{st.st_size}</Size>"
            "<StorageClass>STANDARD</StorageClass></Contents>")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>{bucket}</Name><Prefix>{prefix}</Prefix><KeyCount>{len(items)}</KeyCount>"
            f"<MaxKeys>{max(1000, len(items))}</MaxKeys><IsTruncated>false</IsTruncated>"
            + "".join(items) + "</ListBucketResult>\n")


def write_listing(spec: CohortSpec, root: Path) -> Path:
    """A ListObjectsV2 answer naming every recording, with the size and ETag nginx serves."""
    objects = [(key(i), root / BUCKET / key(i)) for i in range(spec.recordings)]
    out = root / "_list" / "cohort.xml"
    out.parent.mkdir(exist_ok=True)
    out.write_text(listing_xml(BUCKET, PREFIX, objects))
    return out


def touched_bytes(manifest: dict, chunk_keys: set[str]) -> int:
    """Compressed bytes of the distinct chunks (``rNNNN/eeg/ch.ci``) a sampler run touched."""
    total = 0
    for k in chunk_keys:
        rec, _, member = k.partition("/")
        total += manifest["chunks"][rec].get(member, 0)
    return total
