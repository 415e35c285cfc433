"""FUSE front-end in three parts, each importable on its own:

- :mod:`.policy`: what the kernel may cache for an open of a path at a version (pure);
- :mod:`.operations`: the thin ``Operations`` over a :class:`~zipmount.tree.Tree`: errno
  translation only, the policy's answers put into ``fuse_file_info``;
- :mod:`.session`: the libfuse 3 binding (mfusepy, ctypes): the only module that loads libfuse.
"""
