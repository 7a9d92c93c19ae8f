"""Stage commands as shell words: the one place where config values are quoted for a command line.

DVC and Snakemake run a stage's `cmd` through a shell; every value that reaches one (paths, sources, names) goes
through `command`, so that the shell hands the program exactly the argument the config holds.
"""

from __future__ import annotations

import re
from pathlib import Path


def unquotable(value: str) -> bool:
    r"""Whether no stage command can carry `value` as one argument: DVC runs a `cmd` string line by line
    (str.splitlines, which also splits at \v, \f, \x1c-\x1e, \x85, \u2028, \u2029), and no argv holds a NUL."""
    return "\0" in value or len(f"x{value}x".splitlines()) > 1


# Words left unquoted: shlex.quote's safe characters, plus `~` inside a word (as in the official CIFAR URLs), but
# neither a leading `=` (zsh expands `=cmd`) nor `~` in a word with `=` (bash expands `x=~/y` in arguments).
_PLAIN_WORD = re.compile(r"[\w@%+:,./-][\w@%+=:,./~-]*", re.ASCII)


def _shell_word(text: str) -> str:
    """`text` as one word of sh, bash or zsh: unchanged when plain, else single-quoted (as shlex.quote does)."""
    if _PLAIN_WORD.fullmatch(text) and not ("~" in text and "=" in text):
        return text
    return "'" + text.replace("'", "'\"'\"'") + "'"


def command(*argv: str | int | Path) -> str:
    """The DVC stage command that runs exactly `argv`: the one place where values are quoted. Each part becomes one
    shell word (`_shell_word`; shlex.split gives `argv` back), and `${` is escaped as `\\${`, which DVC's templating
    turns back into `${` instead of substituting a parameter."""
    words = []
    for part in argv:
        if isinstance(part, bool) or not isinstance(part, (str, int, Path)):
            raise TypeError(f"command part {part!r}: expected str, int or Path")
        word = str(part)
        if unquotable(word):
            raise ValueError(f"command part {word!r}: a line break or NUL cannot be part of a stage command")
        words.append(_shell_word(word))
    return " ".join(words).replace("${", "\\${")
