"""Archive layer: the central-directory index of one zip object and reads of its members."""

from .archive import SUPPORTED_METHODS, Archive
from .decompress import Decoding
from .index.central import read_central_directory
from .index.naming import NAME_MAX, build_tree, clean_name
from .index.table import Entry
from .members import CompressedReader, MemberReader, StoredReader
from .readahead import READAHEAD_MAX, READAHEAD_MIN, Prefetcher
from .remote import CachedObject, RemoteFile

__all__ = ["NAME_MAX", "READAHEAD_MAX", "READAHEAD_MIN", "SUPPORTED_METHODS", "Archive",
           "CachedObject", "CompressedReader", "Decoding", "Entry", "MemberReader", "Prefetcher",
           "RemoteFile", "StoredReader", "build_tree", "clean_name", "read_central_directory"]
