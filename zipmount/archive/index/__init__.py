"""The index of one archive: its central directory read into cleaned, compact entries, persisted.

Modules, in the order an index is made:

- :mod:`.central` reads the central directory (the end records, then the records) from a
  ``read(start, end)`` function: the only part that does I/O while an index is made;
- :mod:`.extra` and :mod:`.names` (pure): what a record's extra fields say, and which code page
  an archive's names are in;
- :mod:`.naming` (pure): the records made into entries: names decoded and cleaned, links
  resolved, overlapping members and special files dropped, duplicates numbered;
- :mod:`.table` (pure): :class:`~.table.Entry` and the compact :class:`~.table.EntryTable`;
- :mod:`.store`: the table persisted in the disk cache and loaded back.

What the index shows (documented in the README):

- names: UTF-8 when flag 0x800 is set, the Info-ZIP Unicode Path field (0x7075) when its CRC
  matches, otherwise one code page per archive (:mod:`.names`); then cleaned
  (:func:`.naming.clean_name`); a backslash separates directories only in entries made on
  DOS or Windows (what Info-ZIP's unzip does), elsewhere it is a character of the name;
- duplicates: the **last** entry of a name keeps it (what ``unzip -o`` leaves), earlier ones are
  ``name (1).ext``, ``name (2).ext`` ... in archive order; a file whose name is also a directory's
  is renamed the same way, the directory keeps the name; logged (the first five one by one);
- mtime: NTFS (0x000a, 100 ns) wins, then extended timestamp (0x5455), then the PKWARE unix field
  (0x000d), then the DOS time read as the daemon's local time;
- symlinks: unix mode ``S_IFLNK``; the target is the member's data (Info-ZIP) or the PKWARE unix
  field's data (:attr:`.table.Entry.target`); hard links (PKWARE: flag 0x800 in the external
  attributes plus the target name in 0x000d; PKZIP also writes "made by DOS" with a unix mode)
  are the target's data under the link's name, ``nlink`` counting both; a hard link whose target
  is missing, of another type, or itself (loops) is dropped with a log line, except a symlink so
  flagged: PKZIP flags symlinks that have several links, so it stays a symlink to its field;
- permissions: a unix mode (made on unix, or PKZIP's "made by DOS" with one) gives its stored
  bits, sticky kept, setuid and setgid dropped; without one, files 0644 (0444 with the DOS
  read-only attribute) and directories 0755, as are implied directories;
- fifos, devices and sockets are skipped (one log line per archive); a "fifo" with data (Info-ZIP
  ``-FI``) is a regular file;
- members sharing bytes (overlap bombs), or running into the central directory, are dropped with
  one log line per archive; of several records at one offset only the first (in central
  directory order) is kept.
"""
