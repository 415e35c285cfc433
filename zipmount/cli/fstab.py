"""``mount.fuse.zipmount``: the helper mount(8) calls for fstab entries of type ``fuse.zipmount``."""

from __future__ import annotations

import sys


def mount_helper(argv: list[str] | None = None) -> int:
    """``mount.fuse.zipmount SOURCE MOUNTPOINT [-o OPTIONS]``, as mount(8) calls it for fstab."""
    argv = sys.argv[1:] if argv is None else argv
    positional = [a for a in argv if not a.startswith("-")]
    opts: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "-o" and i + 1 < len(argv):
            opts.extend(argv[i + 1].split(","))
    positional = [a for i, a in enumerate(argv) if not a.startswith("-")
                  and not (i > 0 and argv[i - 1] == "-o")]
    if len(positional) != 2:
        print("usage: mount.fuse.zipmount SOURCE MOUNTPOINT [-o options]", file=sys.stderr)
        return 2
    cli = ["mount", *positional]
    fuse_opts = []
    ignored = {"_netdev", "noauto", "auto", "nofail", "user", "users", "ro", "rw", "defaults",
               "suid", "nosuid", "dev", "nodev", "exec", "noexec", "atime", "noatime"}
    for opt in opts:
        key, _, value = opt.partition("=")
        if not key or key in ignored or key.startswith(("x-", "comment=")):
            continue
        if key in ("allow_other", "uid", "gid", "umask"):
            fuse_opts.append(opt)
        elif key in ("config", "root", "suffix", "endpoint_url", "ca_bundle", "profile",
                     "env_file", "cache_dir", "cache_size", "memory", "index_memory", "log_level",
                     "log_file", "ttl", "timeout"):
            cli += [f"--{key.replace('_', '-')}", value]
        elif key in ("anonymous", "no_verify_tls", "no_disk_cache", "offline"):
            cli.append(f"--{key.replace('_', '-')}")
        else:
            print(f"zipmount: error: unknown mount option {key!r}", file=sys.stderr)
            return 2
    if fuse_opts:
        cli += ["-o", ",".join(fuse_opts)]
    from . import main  # the package imports this module first

    return main(cli)
