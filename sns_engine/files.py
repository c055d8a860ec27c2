"""Atomic file writes: a file is either its old content or its whole new content, never half.

The lowest layer of the package (standard library only), so that every other module may use it.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def umask() -> int:
    """This process's umask, read without changing it where Linux tells it (/proc), else by
    setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; once the block has written it and returns, rename it
    over `path` (one atomic step); if the block raises, delete it and re-raise.

    The temporary name is hidden and unique to this process and call (process id + random
    token), so concurrent writers of one target, or two runs sharing a folder, never collide;
    the last rename wins. The block creates the file itself (any writer that takes a path); it
    then gets the permissions of a newly created file, 0666 less the umask (some writers, such as
    safetensors', create 0600 files). Several files that must appear together: enter one
    `atomic_write` per file in a `contextlib.ExitStack`; nothing is renamed until every block
    has finished, and a failure removes every temporary file.

        with atomic_write(out / "config.json") as tmp:
            tmp.write_text(text)
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        if tmp.is_file():
            os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C back while the block writes: a SIGINT that arrives inside it is raised as
    KeyboardInterrupt when the block ends, so an interrupt never abandons a store write half way
    (Zarr's writes wait on its event loop; a write cut there leaves coroutines that print warnings
    at exit). Only in the main thread, which is where Python handles signals; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received and callable(previous):
        previous(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt
