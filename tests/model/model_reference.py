"""The reference model: what a reader of a zipmount tree may see, and which errors it may get.

It knows every version each archive of the store has had (its entries as Python's
:mod:`zipfile` reads the same bytes) and whether faults or changes happened, and answers, for
each observation a door makes, whether the promises allow it:

- a path's kind and size are those of some version the archive has had;
- the bytes read through one handle all come from one version (never mixed), equal to that
  version's member bytes as zipfile reads them;
- errors are only the promised ones: ENOENT (a path some version lacks, or an archive absent at
  some time), EISDIR/ENOTDIR (a path some version has as the other kind), EIO (the store
  failed), ESTALE (the archive changed since the reader pinned it);
- after the faults are lifted and the TTL has passed, every path shows its current version.
"""

from __future__ import annotations

import errno
import io
import posixpath
import zipfile
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Version:
    """One version of one archive: its bytes and its entries as zipfile reads them."""

    number: int
    data: bytes
    files: dict[str, bytes]
    dirs: frozenset[str]

    @classmethod
    def of(cls, number: int, data: bytes) -> Version:
        files: dict[str, bytes] = {}
        dirs = {""}
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                name = info.filename.rstrip("/")
                if info.is_dir():
                    dirs.add(name)
                else:
                    files[name] = zf.read(info)
                parent = posixpath.dirname(name)
                while parent:
                    dirs.add(parent)
                    parent = posixpath.dirname(parent)
        return cls(number, data, files, frozenset(dirs))

    def kind(self, inner: str) -> str | None:
        if inner in self.files:
            return "file"
        return "dir" if inner in self.dirs else None

    def size(self, inner: str) -> int:
        return len(self.files[inner]) if inner in self.files else 0

    def listing(self, inner: str) -> list[str] | None:
        if inner not in self.dirs:
            return None
        prefix = f"{inner}/" if inner else ""
        return sorted({n[len(prefix):].split("/")[0] for n in (*self.files, *self.dirs)
                       if n.startswith(prefix) and n != inner and n})


@dataclass
class History:
    """Every version an archive of the store has had; ``current`` None: absent now."""

    name: str  # as the tree shows it, e.g. "a.zip"
    key: str  # in the store
    versions: list[Version] = field(default_factory=list)
    current: Version | None = None
    ever_absent: bool = False  # absent at some time the tree existed
    changes: int = 0  # replacements, deletions and new ETags since the tree was made

    def record(self, data: bytes) -> Version:
        version = Version.of(len(self.versions), data)
        self.versions.append(version)
        self.current = version
        return version


@dataclass
class Observation:
    """What the model says of one door answer: ``None`` if allowed, else why not."""

    problem: str | None = None


class Reference:
    """The model of one prefix of archives, as one tree shows it."""

    def __init__(self) -> None:
        self.archives: dict[str, History] = {}
        self.faulted = False  # faults were injected since the tree last settled

    # -- changes --------------------------------------------------------------------------------

    def archive(self, name: str, key: str) -> History:
        return self.archives.setdefault(name, History(name, key))

    def split(self, path: str) -> tuple[History | None, str]:
        """(the archive holding ``path``, the path inside it); (None, path) above the archives."""
        parts = path.strip("/").split("/") if path.strip("/") else []
        if parts and parts[0] in self.archives:
            return self.archives[parts[0]], "/".join(parts[1:])
        return None, "/".join(parts)

    # -- what may be seen -------------------------------------------------------------------------

    def stat_allowed(self, path: str, kind: str, size: int) -> str | None:
        hist, inner = self.split(path)
        if hist is None:
            return None if inner == "" and kind == "dir" else \
                f"stat {path!r} gave {kind} above the archives; only the root is there"
        if any(v.kind(inner) == kind and (kind != "file" or v.size(inner) == size)
               for v in hist.versions):
            return None
        return f"stat {path!r} gave {kind} of {size} bytes: no version of {hist.name} has that"

    def listdir_allowed(self, path: str, names: list[str]) -> str | None:
        hist, inner = self.split(path)
        if hist is None:
            if inner:
                return f"listdir {path!r} answered {names} for no directory"
            unknown = set(names) - set(self.archives)
            return f"the root lists {sorted(unknown)}, never archives here" if unknown else None
        if any(v.listing(inner) == sorted(names) for v in hist.versions):
            return None
        return f"listdir {path!r} gave {names}: no version of {hist.name} lists that"

    def open_candidates(self, path: str) -> set[int]:
        """The versions whose member at ``path`` a reader opened there may serve."""
        hist, inner = self.split(path)
        if hist is None:
            return set()
        return {v.number for v in hist.versions if v.kind(inner) == "file"}

    def read_matches(self, path: str, candidates: set[int], offset: int, size: int,
                     data: bytes) -> set[int]:
        """The candidates whose member bytes ``[offset, offset + size)`` are ``data``."""
        hist, inner = self.split(path)
        assert hist is not None
        return {n for n in candidates
                if hist.versions[n].files[inner][offset: offset + size] == data}

    def error_allowed(self, op: str, path: str, code: int) -> str | None:
        """Whether ``op`` on ``path`` may fail with ``code``."""
        hist, inner = self.split(path)
        if code == errno.EIO and self.faulted:
            return None
        if code == errno.ESTALE and hist is not None and hist.changes:
            return None
        kinds = {v.kind(inner) for v in hist.versions} if hist is not None else \
            ({"dir"} if inner == "" else {None})
        if hist is not None and hist.ever_absent:
            kinds.add(None)
        allowed = {
            "stat": {None: errno.ENOENT},
            "listdir": {None: errno.ENOENT, "file": errno.ENOTDIR},
            "open": {None: errno.ENOENT, "dir": errno.EISDIR},
            "read": {},
        }[op]
        if any(allowed.get(k) == code for k in kinds):
            return None
        return (f"{op} {path!r} failed with {errno.errorcode.get(code, code)}, not a promised "
                f"error here (kinds over the versions: {kinds}, faulted: {self.faulted}, "
                f"changes: {hist.changes if hist else 0})")

    def current_view(self, path: str) -> tuple[str, int] | None:
        """(kind, size) of ``path`` in the current versions; None if absent now."""
        hist, inner = self.split(path)
        if hist is None:
            return ("dir", 0) if inner == "" else None
        if hist.current is None:
            return None
        kind = hist.current.kind(inner)
        return (kind, hist.current.size(inner)) if kind is not None else None
