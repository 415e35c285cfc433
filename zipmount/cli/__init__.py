"""Command line: ``zipmount mount|umount|ls|stats|logs|prefetch|cache``, and the fstab helper.

Errors are one line on stderr (``zipmount: error: ...``): exit 2 for usage/config errors, 1 for
everything else. No secret is ever taken on the command line (it would show in ``ps``). Nothing
here imports libfuse: only the daemon a mount starts does.
"""

from __future__ import annotations

import os
import sys

from ..errors import UsageError, ZipmountError
from .cache_cmd import cmd_cache
from .fstab import mount_helper
from .inspect import cmd_ls, cmd_stats
from .logs import cmd_logs
from .mount import cmd_mount, cmd_umount
from .parser import build_parser
from .prefetch import cmd_prefetch

__all__ = ["main", "mount_helper"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:  # `zipmount` alone: what it can do
            parser.print_help(sys.stderr)
            return 2
        if args.command == "mount":
            return cmd_mount(args, argv)
        return {"umount": cmd_umount, "ls": cmd_ls, "stats": cmd_stats, "logs": cmd_logs,
                "prefetch": cmd_prefetch, "cache": cmd_cache}[args.command](args)
    except UsageError as exc:
        print(f"zipmount: error: {exc}", file=sys.stderr)
        return 2
    except ZipmountError as exc:
        print(f"zipmount: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `zipmount stats MP | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
