"""The one exception type the command line turns into a one-line message and exit code 2,
and the one-line form of a command-line parser's complaint."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


class UserError(Exception):
    """Bad input from the user (path, keys, checkpoint, option): the message names the fix."""


def option_error(command: str, message: str, options: Iterable[str]) -> UserError:
    """A parser's complaint (jsonargparse's span several lines) as one line that names the
    option, the closest known one where a flag or config key was mistyped, and the --help to read.

    options: the option strings the command accepts ("--model.d_model", ...)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()] or ["bad arguments"]
    text = lines[0]
    wrong = None
    if match := re.match(r'Parser key "([^"]+)":\s*(.*)', text):  # a value of the wrong type, a missing file
        key, detail = match.groups()
        accepted = accepted_values(message)
        given = re.search(r"(?:Got|Given) value: (.*)", message)
        if accepted and given:  # "Expected a <class 'int'>. Got value: abc", or one such line per type of a Union
            text = f"--{key} takes {accepted}, got {given.group(1).strip()!r}"
        else:
            text = f"--{key}: {detail or (lines[1] if len(lines) > 1 else 'invalid value')}"
    elif match := re.match(r"unrecognized arguments: (\S+)", text):  # a mistyped flag
        wrong = match.group(1).split("=")[0]
    elif match := re.search(r"Group '([^']+)' does not accept option '([^']+)'", text):  # a key in a file
        wrong = f"--{match.group(1)}.{match.group(2)}"
    elif match := re.search(r"does not accept option '([^']+)'", text):  # a mistyped key in a config file
        wrong = "--" + match.group(1)
    elif match := re.search(r"Option '([^']+)' is not accepted", text):  # a mistyped section in a file
        wrong = "--" + match.group(1)
    close = difflib.get_close_matches(wrong, list(options), n=1, cutoff=0.7) if wrong else []
    hint = f" (did you mean {close[0]}?)" if close else ""
    return UserError(f"{text}{hint}; python -m pipeline {command} --help lists the options")


def accepted_values(message: str) -> str | None:
    """What jsonargparse's "Expected a ..." lines accept, in words ("int or null", "one of 'wandb',
    'csv'"), or None where a line is of a kind this does not read."""
    expected = re.findall(r"Expected a (.*?)(?:\. Got value:.*)?$", message, flags=re.MULTILINE)
    types, literals = [], []
    for item in expected:
        if match := re.fullmatch(r"<class '(\w+)'>", item.strip()):
            types.append("null" if match.group(1) == "NoneType" else match.group(1))
        elif match := re.fullmatch(r"typing\.Literal\[(.*)\]", item.strip()):
            literals.append(match.group(1))
        else:
            return None
    words = [t for t in types if t != "null"] + ([f"one of {', '.join(literals)}"] if literals else [])
    return " or ".join(words + ["null"] * ("null" in types)) or None
