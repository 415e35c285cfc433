"""What a path was at the last check (one archive, or a prefix's listing), kept in the file store
so that a remount within the TTL needs no request."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict

from ..cache import DiskTier
from ..store import ObjectInfo

log = logging.getLogger(__name__)


def _view_file(location: str, path: str) -> str:
    return hashlib.sha256(f"{location}\0{path}".encode()).hexdigest()[:40] + ".view.json"


def remember_view(disk: DiskTier | None, location: str, path: str, objects: list[ObjectInfo],
                  single: bool) -> None:
    """Note in the cache dir what ``path`` is just now: one archive (``single``) or the listing
    of a prefix. The next mount within the TTL starts from it."""
    if disk is None:
        return
    doc = {"single": single, "objects": [asdict(o) for o in objects], "checked": time.time()}
    data = json.dumps(doc, separators=(",", ":")).encode()
    try:
        disk.write(_view_file(location, path), [data], len(data))
    except OSError as exc:
        log.debug("cannot remember what %s is: %s", path, exc)


def remembered_view(disk: DiskTier | None, location: str, path: str,
                    ttl: float) -> tuple[list[ObjectInfo], bool, float] | None:
    """What an earlier mount saw at ``path`` less than ``ttl`` seconds ago: its objects, whether
    it is one archive, and the age of that view."""
    if disk is None or ttl <= 0:
        return None
    name = _view_file(location, path)
    raw = disk.read(name)
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
        age = time.time() - float(doc["checked"])
        objects = [ObjectInfo(**o) for o in doc["objects"]]
        single = bool(doc["single"]) and len(objects) == 1
    except (ValueError, TypeError, KeyError):
        disk.remove(name)
        return None
    return (objects, single, age) if 0 <= age < ttl else None
