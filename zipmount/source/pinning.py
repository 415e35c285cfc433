"""Pinning reads to one version: the conditions a GET carries and the check of its answer, and
the identity (:class:`~zipmount.store.ObjectInfo`) read from fsspec's details of an object."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ..errors import ObjectChanged
from ..store import ObjectInfo


def pin_conditions(obj: ObjectInfo) -> dict[str, Any]:
    """The conditions a range GET carries so that it is answered from version ``obj`` only.

    A strong ETag is sent as ``If-Match`` (quoted if the store listed it without quotes). A weak
    ETag cannot be (If-Match compares strongly: every read would fail), and a store without
    ETags has none: then ``If-Unmodified-Since`` the object's mtime, and :func:`check_answer`
    compares the answer's ETag, Last-Modified and total size with the pinned ones.
    """
    tag = obj.etag
    if tag and not tag.startswith(("W/", "mtime:")):
        return {"IfMatch": tag if tag.startswith('"') else f'"{tag}"'}
    if obj.mtime > 0:
        return {"IfUnmodifiedSince": datetime.fromtimestamp(obj.mtime, tz=timezone.utc)}
    return {}


def _bare_etag(tag: str) -> str:
    return tag.removeprefix("W/").strip('"')


def check_answer(obj: ObjectInfo, resp: dict[str, Any]) -> None:
    """Raise ObjectChanged unless a GET's answer comes from version ``obj``.

    Catches a store (or a cache in between) that ignores the conditions: the bytes would be
    another version's and must never be mixed with this one's.
    """
    etag = resp.get("ETag")
    pinned = obj.etag if not obj.etag.startswith("mtime:") else ""
    changed = ""
    if pinned and etag and _bare_etag(etag) != _bare_etag(pinned):
        changed = f"ETag {etag}, serving {obj.etag}"
    total = str(resp.get("ContentRange") or "").rpartition("/")[2]
    if not changed and total.isdigit() and int(total) != obj.size:
        changed = f"{total} bytes, serving {obj.size}"
    modified = resp.get("LastModified")
    if not changed and not pinned and isinstance(modified, datetime) and obj.mtime > 0 and \
            int(modified.timestamp()) != int(obj.mtime):
        changed = f"modified {modified.isoformat()}, serving the version of {obj.mtime:.0f}"
    if changed:
        raise ObjectChanged(f"read {obj.path}: the object changed on the server ({changed})")


def object_info(path: str, info: dict[str, Any]) -> ObjectInfo:
    etag = info.get("ETag") or info.get("VersionId") or ""
    mtime = info.get("LastModified") or info.get("mtime") or info.get("created") or 0.0
    if isinstance(mtime, datetime):
        mtime = mtime.timestamp()
    if not etag:
        etag = f"mtime:{float(mtime)!r}"
    return ObjectInfo(path=info.get("name", path).rstrip("/"),
                      size=int(info.get("size") or 0), etag=str(etag), mtime=float(mtime))
