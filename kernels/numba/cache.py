"""The on-disk compile cache of the numba kernels, keyed on everything a kernel inlines.

numba keys a cached function on its own source file: a kernel in rnn.py that inlines
vec.py, vmath.py, tile.py and gemm.py would load its old machine code after any of
those changed. Here the cache locators of the functions defined in this package fold a
hash of every source file of the package (``kernels/numba/*.py`` and
``kernels/__init__.py``, whose constants the kernels read) into the source stamp
numba stores with each index: one changed byte in any of them and every kernel of the
package recompiles on its next call instead of loading stale code. The ISA
(config.ISA, which picks vector widths and tile shapes) is part of each index's file
name, so kernels built for different ISAs sit side by side; numba itself keys each
entry on the target CPU name and features.

Where the files go is numba's choice, unchanged: ``NUMBA_CACHE_DIR`` when set, else the
package's ``__pycache__`` when writable, else the user-wide cache directory.
"""

import functools
import glob
import hashlib
import os

from numba.core import caching

from . import config

_DIR = os.path.dirname(os.path.abspath(__file__))


def sources():
    """The files whose contents key every cached kernel of this package."""
    return sorted(glob.glob(os.path.join(_DIR, "*.py"))) + \
        [os.path.join(os.path.dirname(_DIR), "__init__.py")]


@functools.lru_cache(maxsize=None)
def source_hash():
    """sha256 over the names and contents of :func:`sources` (read once per process)."""
    h = hashlib.sha256()
    for path in sources():
        h.update(os.path.relpath(path, os.path.dirname(_DIR)).encode())
        with open(path, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


class _PackageKeyed:
    """Mixin over a numba source-file locator: only for this package's functions; the
    stamp adds the package's source hash, the disambiguator the ISA."""

    def get_source_stamp(self):
        return (super().get_source_stamp(), source_hash())

    def get_disambiguator(self):
        return f"{super().get_disambiguator()}-{config.ISA.name}"

    @classmethod
    def from_function(cls, py_func, py_file):
        if os.path.dirname(os.path.abspath(py_file)) != _DIR:
            return None
        return super().from_function(py_func, py_file)


class UserProvidedLocator(_PackageKeyed, caching.UserProvidedCacheLocator):
    pass


class InTreeLocator(_PackageKeyed, caching.InTreeCacheLocator):
    pass


class UserWideLocator(_PackageKeyed, caching.UserWideCacheLocator):
    pass


def install():
    """Put this package's locators in front of numba's (in numba's own order of
    preference). Must run before the first ``@njit(cache=True)`` of the package: numba
    picks a function's locator when its dispatcher is created."""
    classes = caching.CacheImpl._locator_classes
    for cls in (UserWideLocator, InTreeLocator, UserProvidedLocator):
        if cls not in classes:
            classes.insert(0, cls)
