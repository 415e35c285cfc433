"""`make cli-docs`: the man page and the shell completions build from the argument parser, and
name every command and option that `--help` shows."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from zipmount.cli.parser import build_parser

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "cli_docs.py"


def _options() -> dict[str, list[str]]:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    return {name: [s for a in sub._actions for s in a.option_strings if s.startswith("--")
                   and a.help != "==SUPPRESS=="] for name, sub in commands.items()}


def test_the_man_page_and_completions_build_and_name_every_option(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    man = (tmp_path / "man1" / "zipmount.1").read_text()
    bash = (tmp_path / "completion" / "zipmount.bash").read_text()
    zsh = (tmp_path / "completion" / "zipmount.zsh").read_text()
    for command, options in _options().items():
        assert f"zipmount {command}" in man, command
        assert command in bash and command in zsh, command
        for option in options:
            assert option.replace("-", r"\-") in man or option in man, (command, option)
            assert option in bash and option in zsh, (command, option)
    assert "--ready-fd" not in bash, "a hidden option is offered for completion"
    assert subprocess.run(["bash", "-n", str(tmp_path / "completion" / "zipmount.bash")]
                          ).returncode == 0
    if shutil.which("groff"):
        out = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z",
                              str(tmp_path / "man1" / "zipmount.1")],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and not out.stderr.strip(), out.stderr
