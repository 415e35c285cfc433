"""Cache layer: blocks of remote objects in a memory tier and in a file store shared by processes.

One :class:`BlockCache` serves every archive of a process. Blocks are keyed by the object's
identity (location, path, ETag, size), so a replaced object can never be served from old blocks.
``memory`` holds the memory tier, ``files`` the file store (any layer's named blobs: block runs,
archive indexes, views, spill files), ``runs`` the checksummed run files of blocks in it, ``blocks``
the block cache over both.

Why not fsspec's caches: s3fs/fsspec file caches (``readahead``, ``blockcache``, ``bytes``) live in
one open file object, in memory only, with 5-50 MB blocks; on the zarr-in-zip workload (scattered
small chunks) they fetch whole blocks for each chunk and forget everything on re-read
(docs/BENCHMARKS.md, "Measurements behind choices in the code").
``CachingFileSystem``/``blockcache`` persist whole sparse files with one JSON metadata file rewritten
per update, have no global size cap or LRU eviction, no per-block checksum, and are not safe for
several processes writing one directory. What is needed here is small (64 KiB) blocks fetched by
right-sized range requests, one memory cap for all archives, single flight for concurrent misses,
and crash-safe, checksummed, size-capped persistence that processes can share.
"""

from .blocks import BLOCK_SIZE, MAX_REQUEST, BlockCache, CacheClosed
from .files import FileStore, StoredFile
from .memory import MemoryTier
from .runs import RunFiles, run_blocks

DiskTier = FileStore  # the name the other layers import

__all__ = ["BLOCK_SIZE", "MAX_REQUEST", "BlockCache", "CacheClosed", "DiskTier", "FileStore",
           "MemoryTier", "RunFiles", "StoredFile", "run_blocks"]
