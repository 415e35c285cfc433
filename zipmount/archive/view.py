"""What a member reader is given: the member's bytes and where they are, not the archive."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ArchiveError

if TYPE_CHECKING:
    from .index.table import Entry
    from .remote import CachedObject


class Health:
    """The members of one archive version found corrupt: the kernel retries a failed read page
    by page, and a retry must not be served what the failed read refused."""

    def __init__(self) -> None:
        self._corrupt: dict[str, str] = {}  # member -> why: every later read of it fails too

    def __len__(self) -> int:
        """How many members were found corrupt."""
        return len(self._corrupt)

    def mark_corrupt(self, entry: Entry, exc: ArchiveError) -> None:
        self._corrupt[entry.name] = str(exc)

    def check_intact(self, entry: Entry) -> None:
        """Raise the error found earlier in ``entry``'s data, if any."""
        why = self._corrupt.get(entry.name)
        if why is not None:
            raise ArchiveError(why)


@dataclass(frozen=True)
class MemberView:
    """One member of one archive version, as its readers see it."""

    cached: CachedObject  # the archive's bytes, through the block cache
    entry: Entry
    data_start: int  # where the member's (compressed) data starts in the archive
    version: str  # names this member of this archive version (the object's ETag is in it)
    health: Health

    @property
    def data_end(self) -> int:
        return self.data_start + self.entry.compress_size

    def check_intact(self) -> None:
        self.health.check_intact(self.entry)

    def mark_corrupt(self, exc: ArchiveError) -> None:
        self.health.mark_corrupt(self.entry, exc)
