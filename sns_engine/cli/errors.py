"""How an error reads on the command line: one line saying what it means (`describe`), in the
command's own option spelling (`cli_message`)."""

from __future__ import annotations

import argparse
import errno
import re


def _out_of_memory(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError" or (
        isinstance(err, RuntimeError) and ("DefaultCPUAllocator" in text or "out of memory" in text))


def describe(err: BaseException, smaller: str | None = None, target: str | None = None) -> str:
    """One line saying what `err` means: its own message for the API's errors (ValueError), a
    plain statement for the machine's (file system, memory), the type as well for anything else.
    `smaller` says what to make smaller when memory ran out; `target` is the path the command
    writes, named when a full disk's error does not say which file it was writing."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    if _out_of_memory(err):
        size = re.search(r"allocate (\d+) bytes|allocate ([\d.]+ [KMGTP]i?B)", text, re.IGNORECASE)
        amount = size and (f"{int(size[1]) / 1e9:.1f} GB" if size[1] else size[2])
        return ("out of memory" + (f" allocating {amount}" if amount else "")
                + (f"; {smaller}" if smaller else ""))
    if isinstance(err, ValueError):
        return text
    cause: BaseException | None = err
    while cause is not None and not (isinstance(cause, OSError) and cause.errno is not None):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, OSError):
        where = cause.filename
        if cause.errno == errno.ENOSPC:
            return f"no space left on device writing {where or target or 'the output'}"
        reason = (cause.strerror or str(cause)).lower()
        return f"{reason}: {where}" if where is not None else reason
    if isinstance(err, OSError):
        return text
    return f"unexpected {type(err).__name__}: {text} (rerun with --debug for the traceback)"


def cli_message(message: str, parser: argparse.ArgumentParser) -> str:
    """`message` (an error or a help text) with the API's parameter spellings (name=VALUE,
    name=True, "name must", `name`) in the spelling of `parser`'s options (--name VALUE, --name)."""
    for action in parser._actions:
        options = [s for s in action.option_strings if s.startswith("--")]
        if not options:
            continue
        name = re.escape(action.dest)
        if isinstance(action, argparse.BooleanOptionalAction):
            message = re.sub(rf"(?<![\w-]){name}=True\b", options[0], message)
            message = re.sub(rf"(?<![\w-]){name}=False\b", options[1], message)
        elif action.nargs == 0:
            message = re.sub(rf"(?<![\w-]){name}=True\b", options[0], message)
        else:
            message = re.sub(rf"(?<!-set )(?<![\w-]){name}=(?:'([^']*)'|([\w.+-]*))",
                             lambda m, option=options[0]: f"{option} {m[1] or m[2]}".rstrip(), message)
            message = re.sub(rf"(?<![\w-]){name}(?= must\b)", options[0], message)
        message = message.replace(f"`{action.dest}`", options[0])
    message = re.sub(r"(--[\w-]+) \(\1\)", r"\1", message)  # "overwrite=True (--overwrite)"
    return re.sub(r"\b\w+=True \((--[\w-]+)\)", r"\1", message)  # another command's option
