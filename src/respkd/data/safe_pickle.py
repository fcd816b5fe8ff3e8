"""Read the pickled numpy arrays of CIFAR's Python release without running code a pickle could carry.

A pickle is a program: its GLOBAL/STACK_GLOBAL opcodes name any importable callable (``os.system``, ``eval``) and
REDUCE calls it. :class:`NumpyOnlyUnpickler` resolves only the handful of names that numpy arrays, numpy scalars
and their dtypes are rebuilt from, and refuses every other name before anything is called. Plain containers and
values (dict, list, tuple, str, bytes, int, float) need no names at all, so they load as usual.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from respkd.errors import RespkdError

__all__ = ["NumpyOnlyUnpickler", "RefusedName", "load_numpy_pickle"]

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct, scalar
    from numpy._core.numeric import _frombuffer
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar
    from numpy.core.numeric import _frombuffer

# (module, name) as written in the pickle -> the object it may resolve to. numpy 1.x writes numpy.core.*, numpy 2
# writes numpy._core.*; both spellings mean the same function. Each entry only builds an array, a dtype or a scalar
# from data (no file, process or import access).
_ALLOWED: dict[tuple[str, str], Any] = {
    **{(f"{core}.multiarray", "_reconstruct"): _reconstruct for core in ("numpy.core", "numpy._core")},
    **{(f"{core}.multiarray", "scalar"): scalar for core in ("numpy.core", "numpy._core")},
    # protocol 5 writes contiguous arrays as _frombuffer(buffer, dtype, shape, order)
    **{(f"{core}.numeric", "_frombuffer"): _frombuffer for core in ("numpy.core", "numpy._core")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Python 3 writes bytes (an array's raw data) at protocol 2 as _codecs.encode(text, "latin1"): a pure function
    ("_codecs", "encode"): codecs.encode,
}


class RefusedName(pickle.UnpicklingError):
    """The pickle names something outside the allowed list (raised before anything is called)."""


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain Python values, and refuses to resolve any other name."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise RefusedName(
                f"it references {module}.{name}; only numpy arrays and plain values are allowed"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedName("it uses persistent ids, which a data file never needs")


def load_numpy_pickle(path: Path) -> Any:
    """Unpickle ``path`` (numpy arrays, dicts, lists and plain values only); any other content is one-line error.

    ``encoding="latin1"`` reads Python 2 pickles (CIFAR's release was written by Python 2's cPickle): their ``str``
    keys become ``str`` and arrays' raw data decode byte for byte, as numpy documents for such files.
    """
    try:
        with open(path, "rb") as f:
            return NumpyOnlyUnpickler(f, encoding="latin1").load()
    except OSError as err:
        raise RespkdError(f"{path}: cannot read ({err.strerror or err})") from None
    except RefusedName as err:
        raise RespkdError(f"{path}: refused to unpickle: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as err:
        # truncated files end in EOFError; damaged ones in any of these while the opcodes are replayed
        raise RespkdError(f"{path}: not a readable pickle, truncated or damaged ({type(err).__name__}: {err})") from None
