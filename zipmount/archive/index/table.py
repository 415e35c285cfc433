"""The compact entry table of one archive: entries by cleaned path as sorted keys plus array
columns (pure: no I/O)."""

from __future__ import annotations

import bisect
import sys
from array import array
from collections.abc import ItemsView, Iterable, Iterator, Mapping, Sequence, ValuesView
from typing import NamedTuple, overload


class Entry(NamedTuple):
    """One file, directory or symlink of an archive, as the mount shows it."""

    name: str  # cleaned path inside the archive, no leading/trailing slash
    kind: str  # "file", "dir" or "link"
    size: int
    mtime_ns: int
    mode: int  # permission bits only
    compress_size: int = 0
    method: int = 0
    header_offset: int = 0
    crc: int = 0
    flags: int = 0
    raw_name_len: int = 0
    extra_len: int = 0
    nlink: int = 1  # hard links: entries sharing this data
    target: str = ""  # a symlink whose target is in the PKWARE unix field, not in its data

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & 0x1)


# Entry fields stored as array columns; name, kind and target are kept apart.
FIELDS = ("size", "mtime_ns", "mode", "compress_size", "method", "header_offset", "crc", "flags",
          "raw_name_len", "extra_len", "nlink")
CODES = "qqIqHqIHHHI"
I64 = (-(2**63), 2**63 - 1)
KINDS = ("file", "dir", "link")
FILE, DIR, LINK = range(3)
DROPPED = 0xFF  # a row's kind when it is left out of the table
# Bytes of one row beyond its key's characters: its key's start, its kind and its columns (plus
# what growing arrays keep spare, about an eighth).
_ROW_BYTES = 4 + 1 + sum(array(code).itemsize for code in CODES) * 9 // 8
_TARGET_BYTES = 120  # a symlink target kept in a dict: the slot, an int, the string's header
_new_tuple = tuple.__new__
_STRIDE = 16  # one key in this many is kept as a string of its own, to search in C


def sort_key(name: str) -> str:
    """Sort key of a path: parent, NUL, base name. Sorted keys put each directory's children in
    one run, in name order (names hold no NUL once cleaned)."""
    parent, _, base = name.rpartition("/")
    return f"{parent}\0{base}"


def _name(key: str) -> str:
    parent, _, base = key.partition("\0")
    return f"{parent}/{base}" if parent else base


class SortedKeys(Sequence[str]):
    """Sort keys in order, held as one string and the start of each key in it: an index is a
    few large allocations, not one small object per entry, so that loading and dropping
    thousands of indexes leaves no holes in the heap (one string per key held ~2x the charged
    memory in a sweep of 3,000 archives). Every :data:`_STRIDE`-th key is also kept as a string
    of its own, so that a search bisects those in C and then a few keys."""

    def __init__(self, text: str, starts: array) -> None:
        self.text = text
        self.starts = starts  # len(self) + 1 offsets, the last one len(text)
        self._sample = [self[i] for i in range(0, len(self), _STRIDE)]
        # Measured once (the keys never change): summing the samples took ~90 us per call for
        # a 12,000-entry index, asked on every open through the tree's index charge.
        self._memory_bytes = (sys.getsizeof(text) + sys.getsizeof(starts)
                              + sys.getsizeof(self._sample) + sum(map(sys.getsizeof, self._sample)))

    @classmethod
    def of(cls, keys: list[str]) -> SortedKeys:
        starts = array("I", [0])
        at = 0
        for key in keys:
            at += len(key)
            starts.append(at)
        return cls("".join(keys), starts)

    def __len__(self) -> int:
        return len(self.starts) - 1

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> list[str]: ...

    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.text[self.starts[i]: self.starts[i + 1]]

    def __iter__(self) -> Iterator[str]:
        text, starts = self.text, self.starts
        return (text[starts[i]: starts[i + 1]] for i in range(len(starts) - 1))

    def bisect_left(self, key: str, lo: int = 0) -> int:
        """The first position at or after ``lo`` whose key is not less than ``key``."""
        s = bisect.bisect_left(self._sample, key)  # samples before s are < key, s's is >= key
        lo = max(lo, (s - 1) * _STRIDE + 1) if s else lo
        hi = min(s * _STRIDE, len(self))
        text, starts = self.text, self.starts
        while lo < hi:
            mid = (lo + hi) // 2
            if text[starts[mid]: starts[mid + 1]] < key:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def memory_bytes(self) -> int:
        """The string, the starts and the sampled keys."""
        return self._memory_bytes


class EntryTable(Mapping[str, Entry]):
    """Entries by cleaned path, held as sorted keys plus array columns (~65 bytes + the name's
    characters per entry instead of ~500 for a dict of named tuples); an :class:`Entry` is built
    on lookup.

    ``sorted_keys``, ``kinds``, ``columns`` (in :data:`FIELDS` order) and ``targets`` (row -> symlink
    target) are the table's storage, read by :mod:`.store`; treat them as read-only.
    ``cd_start``: where the archive's central directory starts (no member's data runs past it);
    None for a table not read from an archive.
    """

    def __init__(self, keys: SortedKeys, kinds: bytes, columns: list[array],
                 targets: dict[int, str], cd_start: int | None = None) -> None:
        self.cd_start = cd_start
        self.sorted_keys = keys
        self.kinds = kinds
        self.columns = columns
        self.targets = targets
        self.children = Children(self)
        self._target_bytes = sum(_TARGET_BYTES + len(t) for t in targets.values())

    def memory_bytes(self) -> int:
        """The table's size in memory: its keys, columns and targets (measured within a few
        percent, tests/unit/test_index.py)."""
        keys = self.sorted_keys
        return keys.memory_bytes() - sys.getsizeof(keys.starts) + len(keys) * _ROW_BYTES \
            + self._target_bytes

    def name_bytes(self) -> int:
        """The mean size of an entry's name as a Python string: what remembering a member by
        its name costs."""
        n = len(self.sorted_keys)
        return sys.getsizeof("") + (len(self.sorted_keys.text) // n if n else 0)

    def _index(self, name: str) -> int:
        key = sort_key(name)
        i = self.sorted_keys.bisect_left(key)
        if i < len(self.sorted_keys) and self.sorted_keys[i] == key:
            return i
        return -1

    def _entry(self, i: int) -> Entry:
        c = self.columns
        # tuple.__new__ skips the named tuple's Python-level __new__: half the cost of a lookup
        return _new_tuple(Entry, (_name(self.sorted_keys[i]), KINDS[self.kinds[i]], c[0][i], c[1][i],
                                  c[2][i], c[3][i], c[4][i], c[5][i], c[6][i], c[7][i], c[8][i],
                                  c[9][i], c[10][i], self.targets.get(i, "")))

    def __getitem__(self, name: str) -> Entry:
        i = self._index(name) if isinstance(name, str) else -1
        if i < 0:
            raise KeyError(name)
        return self._entry(i)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._index(name) >= 0

    def __iter__(self) -> Iterator[str]:
        return map(_name, self.sorted_keys)

    def __len__(self) -> int:
        return len(self.sorted_keys)

    def items(self) -> ItemsView[str, Entry]:
        return _Items(self)

    def values(self) -> ValuesView[Entry]:
        return _Values(self)

    def is_dir(self, name: str) -> bool:
        i = self._index(name)
        return i >= 0 and self.kinds[i] == DIR

    def child_names(self, name: str) -> list[str]:
        """Base names of the entries in directory ``name`` (sorted)."""
        keys = self.sorted_keys
        prefix = f"{name}\0"
        lo = keys.bisect_left(prefix)
        hi = keys.bisect_left(f"{name}\x01", lo)
        text, starts, cut = keys.text, keys.starts, len(prefix)
        return [text[starts[i] + cut: starts[i + 1]] for i in range(lo, hi)]

    def dir_names(self) -> Iterator[str]:
        return (_name(k) for k, kind in zip(self.sorted_keys, self.kinds, strict=True) if kind == DIR)

    def dir_count(self) -> int:
        return self.kinds.count(DIR)


class _Items(ItemsView[str, Entry]):
    """Items in key order without a lookup per item."""

    _mapping: EntryTable

    def __iter__(self) -> Iterator[tuple[str, Entry]]:
        table = self._mapping
        for i in range(len(table)):
            entry = table._entry(i)
            yield entry.name, entry


class _Values(ValuesView[Entry]):
    _mapping: EntryTable

    def __iter__(self) -> Iterator[Entry]:
        table = self._mapping
        return map(table._entry, range(len(table)))


class Children(Mapping[str, list[str]]):
    """Each directory's sorted child names ("" is the root), computed from the table on lookup."""

    def __init__(self, table: EntryTable) -> None:
        self._table = table

    def __getitem__(self, name: str) -> list[str]:
        if name not in self:
            raise KeyError(name)
        return self._table.child_names(name)

    def __contains__(self, name: object) -> bool:
        return name == "" or (isinstance(name, str) and self._table.is_dir(name))

    def __iter__(self) -> Iterator[str]:
        yield ""
        yield from self._table.dir_names()

    def __len__(self) -> int:
        return 1 + self._table.dir_count()


class Rows:
    """Entries under construction, column by column (no object per entry but its name)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.kinds = bytearray()
        self.columns = [array(code) for code in CODES]
        self.targets: dict[int, str] = {}

    def append(self, name: str, kind: int, values: Iterable[int], target: str = "") -> int:
        """Add a row (``values`` in :data:`FIELDS` order, 64-bit ones clamped); its index."""
        i = len(self.names)
        self.names.append(name)
        self.kinds.append(kind)
        for col, value in zip(self.columns, values, strict=True):
            if col.typecode == "q":
                value = min(max(value, I64[0]), I64[1])
            col.append(value)
        if target:
            self.targets[i] = target
        return i

    def table(self, kept: list[int], cd_start: int | None) -> EntryTable:
        """The table of the rows ``kept`` (their names unique), sorted by path."""
        unsorted = [sort_key(self.names[i]) for i in kept]
        order = sorted(range(len(kept)), key=unsorted.__getitem__)
        source = array("l", (kept[j] for j in order))
        keys = SortedKeys.of([unsorted[j] for j in order])
        del order, unsorted
        columns = [array(col.typecode, map(col.__getitem__, source)) for col in self.columns]
        targets = {pos: self.targets[i] for pos, i in enumerate(source) if i in self.targets}
        return EntryTable(keys, bytes(self.kinds[i] for i in source), columns, targets, cd_start)
