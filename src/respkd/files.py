"""Files written whole or not at all, and JSON files read with a one-line error.

Every file respkd writes goes through :func:`atomic_write` (a kill leaves the old file or the new one, never half of
one); every JSON file it reads back goes through :func:`read_json`. A write that fails (a full disk, an I/O error)
becomes one :class:`~respkd.errors.WriteFailed` line naming the file (:func:`writing`), and the file it would have
replaced is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from respkd.errors import RespkdError, WriteFailed, first_line

__all__ = ["atomic_write", "atomic_write_text", "io_errno", "read_json", "write_failure", "writing"]

# safetensors' writer (Rust) reports an OSError as text: "... I/O error: No space left on device (os error 28)"
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def io_errno(err: BaseException) -> int | None:
    """The errno of a failed write: an OSError's, or the one that safetensors' writer names in its message; None for
    an error that is not about the file system."""
    if isinstance(err, OSError):
        return err.errno if err.errno is not None else errno.EIO
    found = _RUST_OS_ERROR.search(str(err)) if type(err).__name__ == "SafetensorError" else None
    return int(found.group(1)) if found else None


def write_failure(path: Path, err: BaseException, outcome: str) -> WriteFailed | None:
    """The one line for a failed write of ``path``: ``could not write PATH: REASON; OUTCOME`` (``outcome`` says what
    is left, e.g. ``the previous training state is intact``); None when ``err`` is not about the file system."""
    code = io_errno(err)
    if code is None or code == errno.ENAMETOOLONG:  # a path no file system can name is the caller's input
        return None
    return WriteFailed(f"could not write {path}: {os.strerror(code)}; {outcome}")


@contextlib.contextmanager
def writing(path: Path, outcome: str) -> Iterator[None]:
    """A block whose failed writes become :func:`write_failure`'s one line; other errors pass through."""
    try:
        yield
    except WriteFailed:
        raise
    except Exception as err:
        failure = write_failure(path, err, outcome)
        if failure is None:
            raise
        raise failure from None


def atomic_write(path: Path, write: Callable[[Path], None], what: str = "file") -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    The rename is atomic on POSIX: a crash leaves either the old file or the new one, never half of one. A failed
    write raises :class:`~respkd.errors.WriteFailed` (``what``: the noun for the file in its message).
    """
    path = Path(path)
    outcome = f"the previous {what} is intact" if path.exists() else f"no {what} was written"
    with writing(path, outcome):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would survive the rename; give the usual file mode
        try:
            write(Path(tmp))
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write_text(path: Path, text: str, what: str = "file") -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text), what)


def read_json(path: Path, what: str = "file") -> Any:
    """The JSON value in ``path``; a missing, unreadable or malformed file is a one-line :class:`RespkdError` naming
    it (``what`` is the noun for it: ``summary``, ``teacher cache meta``...)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RespkdError(f"{what} {path} does not exist") from None
    except UnicodeDecodeError as err:
        raise RespkdError(f"{path}: not valid JSON ({err})") from None
    except OSError as err:
        raise RespkdError(f"{path}: unreadable {what} ({first_line(err)})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RespkdError(f"{path}: not valid JSON ({err})") from None
