"""The local file header that precedes each member's data, and where that data starts.

A member's data must end before the next local header (or, for the last member, the central
directory): a lying size is EIO, never a neighbour's bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import ArchiveError

if TYPE_CHECKING:
    from .index.table import Entry
    from .remote import CachedObject

LOCAL_HEADER = struct.Struct("<4s5HIIIHH")
LOCAL_SLACK = 512  # local extra fields are often a little longer than the central ones
# Members up to this size are fetched whole by the first read: zarr reads chunks whole.
WHOLE_MEMBER_MAX = 16 * 1024 * 1024


def member_span_end(entry: Entry) -> int:
    """Where ``entry``'s local header and data end if the header is as long as the central one."""
    return (entry.header_offset + LOCAL_HEADER.size + entry.raw_name_len + entry.extra_len
            + entry.compress_size)


def read_data_start(cached: CachedObject, entry: Entry,
                    data_limit: Callable[[Entry], int | None]) -> int:
    """Where ``entry``'s data starts: parses its local header.

    The request that fetches the header also covers the data of a small member, so a cold read
    of a zarr chunk costs one request. ``data_limit(entry)``: where the next local header (or the
    central directory) starts, asked only when the local header is longer than the central one.
    """
    if not 0 <= entry.header_offset < cached.obj.size:
        raise ArchiveError(f"{entry.name}: local header offset {entry.header_offset} is "
                           "outside the archive")
    header_end = (entry.header_offset + LOCAL_HEADER.size + entry.raw_name_len
                  + entry.extra_len + LOCAL_SLACK)
    if entry.compress_size <= WHOLE_MEMBER_MAX:
        header_end += entry.compress_size
    head = cached.read(entry.header_offset, header_end)
    if len(head) < LOCAL_HEADER.size:
        raise ArchiveError(f"{entry.name}: truncated local header")
    sig, *_, name_len, extra_len = LOCAL_HEADER.unpack_from(head)
    if sig != b"PK\x03\x04":
        raise ArchiveError(f"{entry.name}: bad local header signature")
    offset = entry.header_offset + LOCAL_HEADER.size + name_len + extra_len
    if offset + entry.compress_size > cached.obj.size:
        raise ArchiveError(f"{entry.name}: member data runs past the end of the archive")
    # The index dropped members whose name and data run over the next local header; only a
    # local header longer than that (its extra field) can still make the data run over.
    limit = data_limit(entry) if name_len + extra_len > entry.raw_name_len else None
    if limit is not None and offset + entry.compress_size > limit:
        raise ArchiveError(f"{entry.name}: member data ({entry.compress_size} bytes declared) "
                           "runs into the next member or the central directory")
    return offset
