"""Errors that cross layer boundaries, each carrying the errno the mount should return."""

from __future__ import annotations

import errno


class ZipmountError(Exception):
    """Base error: ``str(exc)`` is a one-line message fit for a user."""

    errno: int = errno.EIO


class UsageError(ZipmountError):
    """Bad command line or configuration (exit code 2)."""

    errno = errno.EINVAL


class SourceError(ZipmountError):
    """The remote store failed: network, TLS, credentials, server errors, timeouts."""

    errno = errno.EIO


class ObjectNotFound(SourceError):
    """The object or prefix does not exist."""

    errno = errno.ENOENT


class ObjectChanged(SourceError):
    """The object no longer has the identity (ETag/size) the mount is serving."""

    errno = errno.ESTALE


class ArchiveError(ZipmountError):
    """The object is not a readable zip archive, or a member is corrupt."""

    errno = errno.EIO


class MemberUnsupported(ArchiveError):
    """A member uses an unsupported compression method."""

    errno = errno.EIO


class MemberEncrypted(ArchiveError):
    """A member is encrypted; zipmount has no passwords."""

    errno = errno.EACCES


class NotFound(ZipmountError):
    """No such path in the mounted tree."""

    errno = errno.ENOENT


class NotADirectory(ZipmountError):
    errno = errno.ENOTDIR


class IsADirectory(ZipmountError):
    errno = errno.EISDIR


class NotASymlink(ZipmountError):
    errno = errno.EINVAL
