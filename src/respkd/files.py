"""Files written whole or not at all, and JSON files read with a one-line error.

Every file respkd writes goes through :func:`atomic_write` (a kill leaves the old file or the new one, never half of
one); every JSON file it reads back goes through :func:`read_json`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from respkd.errors import RespkdError, first_line

__all__ = ["atomic_write", "atomic_write_text", "read_json"]


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    The rename is atomic on POSIX: a crash leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
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


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


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
