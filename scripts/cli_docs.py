"""``make cli-docs``: the man page and the bash/zsh completions of ``zipmount``, generated from
its argument parser (argparse-manpage, shtab) so that they never drift from ``--help``.

    python scripts/cli_docs.py OUTDIR   ->  OUTDIR/man1/zipmount.1, OUTDIR/completion/zipmount.{bash,zsh}
"""

from __future__ import annotations

import sys
from pathlib import Path

import shtab
from argparse_manpage.manpage import Manpage

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from zipmount import __version__  # noqa: E402
from zipmount.cli.parser import build_parser  # noqa: E402


def build(outdir: Path) -> list[Path]:
    """Write the man page and the completions below ``outdir``; return their paths."""
    parser = build_parser()
    man = Manpage(parser, _data={"project_name": "zipmount", "version": __version__,
                                 "url": "https://github.com/zipmount/zipmount",
                                 "description": parser.description,
                                 "prog": "zipmount"})
    written = []
    for path, text in ((outdir / "man1" / "zipmount.1", str(man)),
                       (outdir / "completion" / "zipmount.bash", shtab.complete(parser, "bash")),
                       (outdir / "completion" / "zipmount.zsh", shtab.complete(parser, "zsh"))):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for written in build(Path(sys.argv[1] if len(sys.argv) > 1 else "build")):
        print(written)
