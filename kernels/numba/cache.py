"""The on-disk compile cache of the numba kernels, keyed on everything a kernel inlines.

numba keys a cached function on its own source file: a kernel in rnn.py that inlines
vec.py, vmath.py, tile.py and gemm.py would load its old machine code after any of
those changed. Here the cache locators of the functions defined in this package fold a
hash of every source file of the package (``kernels/numba/*.py`` and
``kernels/__init__.py``, whose constants the kernels read) into the source stamp
numba stores with each index: one changed byte in any of them and every kernel of the
package recompiles on its next call instead of loading stale code. The ISA
(config.ISA, which picks vector widths and tile shapes) is part of each index's file
name (with the host-tuned settings: config.ISA_TAG), so kernels built for different
ISAs sit side by side; numba itself keys each entry on the target CPU name and
features.

Where the files go is numba's choice: ``NUMBA_CACHE_DIR`` when set, else the package's
``__pycache__`` when writable, else the user-wide cache directory; and where neither is
writable, ``<tempdir>/rnnfast-numba-cache-<uid>`` when this user owns it and nobody else
may write there, else a private folder per process (:class:`TempDirLocator`).

Data file names. numba names a function's data files 1.nbc, 2.nbc, ... in the order its
overloads are saved, and writes the index before the data; two processes compiling
different overloads of one function (the background warm-up and a foreground call,
two dtypes, two versions of the package, two ISAs) can leave the index pointing an
overload at a file another process filled with a different one: the next process loads
the wrong machine code (reproduced: a float32 call loading the float64 build raised
"can't unbox array"; a stale cache directory from two checkouts raised "descr is NULL").
Here each data file is named after a hash of its index key and the source stamp, and
written before the index that points at it: a name holds one overload of one version
only, so a lost race costs a recompile, never a wrong load (:class:`KeyedDataFile`).
The files of superseded sources stay until the cache directory is cleared (numba's
numbered files were overwritten in turn).
"""

import functools
import glob
import hashlib
import os
import pickle
import stat
import sys
import tempfile

from numba.core import caching
from numba.core.dispatcher import Dispatcher

_DIR = os.path.dirname(os.path.abspath(__file__))
# The package's import name is part of every index's file name: a cached build pickles
# its module's name, and a build saved under one name ("rnnfast.kernels.numba.gemm",
# installed) failed to load under the other ("kernels.numba.gemm", the checkout's root
# on sys.path) with ModuleNotFoundError instead of recompiling.
_IMPORT_TAG = "" if __name__ == "rnnfast.kernels.numba.cache" else \
    "-" + hashlib.sha256(__name__.encode()).hexdigest()[:8]


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
        from .config import ISA_TAG  # config imports this module (and installs it) first
        return f"{super().get_disambiguator()}-{ISA_TAG}{_IMPORT_TAG}"

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


def _unreadable(path, err):
    """Say, once per file, that a cache file could not be read (truncated by a full disk
    or a killed process, or corrupted): the kernel is compiled again, and the save
    that follows replaces the file."""
    if path not in _UNREADABLE:
        _UNREADABLE.add(path)
        print(f"rnnfast: unreadable compile-cache file {path} ({type(err).__name__}: "
              f"{err}); compiling the kernel again, which rewrites it", file=sys.stderr,
              flush=True)


_UNREADABLE = set()


@functools.lru_cache(maxsize=None)
def _temp_cache_root():
    """``<tempdir>/rnnfast-numba-cache-<uid>``, made with mode 0700, where it is a real
    folder (no link) that this user owns and nobody else may write; else a fresh private
    folder for this process alone (no reuse across processes, but nothing another user
    planted is ever loaded: a cache entry is a pickle, and loading one runs its code)."""
    if hasattr(os, "getuid"):
        uid = os.getuid()
        path = os.path.join(tempfile.gettempdir(), f"rnnfast-numba-cache-{uid}")
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError:
            return tempfile.mkdtemp(prefix="rnnfast-numba-cache-")
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o022:
            return path
    return tempfile.mkdtemp(prefix="rnnfast-numba-cache-")


class TempDirLocator(UserWideLocator):
    """The last resort, after the package's ``__pycache__`` and the user-wide cache: a
    folder of this user's in the temporary directory (:func:`_temp_cache_root`). A
    read-only install whose user has no writable home (a read-only container) raised
    numba's "cannot cache function ...: no locator available" on the first call."""

    def __init__(self, py_func, py_file):
        super().__init__(py_func, py_file)
        self._cache_path = os.path.join(_temp_cache_root(),
                                        self.get_suitable_cache_subpath(py_file))


class KeyedDataFile(caching.IndexDataCacheFile):
    """numba's index + data files, each data file named after its index key and the
    source stamp, and written before the index (see the module docstring). A file that
    cannot be read is a cache miss, not an error: numba's own loader raised the
    unpickling error of a truncated file on every call of every later process
    (UnpicklingError, EOFError, or an AttributeError from a flipped byte)."""

    _MAGIC = b"rnnfast-nbc-sha256:"

    def _save_data(self, name, data):
        # the data's sha256 in front of it: a byte changed on disk is found on load
        # (numba's pickle has no check; a flipped byte in its machine code loaded and ran)
        data = self._dump(data)
        path = self._data_path(name)
        with self._open_for_write(path) as f:
            f.write(self._MAGIC + hashlib.sha256(data).digest() + data)

    def _load_data(self, name):
        with open(self._data_path(name), "rb") as f:
            raw = f.read()
        head = len(self._MAGIC) + 32
        digest, data = raw[len(self._MAGIC):head], raw[head:]
        if not raw.startswith(self._MAGIC) or hashlib.sha256(data).digest() != digest:
            raise ValueError("its contents do not match the checksum saved with them")
        return pickle.loads(data)

    def _load_index(self):
        try:
            return super()._load_index()
        except Exception as e:  # noqa: BLE001 - any unreadable index is a miss
            _unreadable(self._index_path, e)
            return {}

    def load(self, key):
        name = self._load_index().get(key)
        if name is None:
            return None
        try:
            return self._load_data(name)
        except OSError:
            return None  # as numba's: removed while the index still names it
        except Exception as e:  # noqa: BLE001 - any unreadable data file is a miss
            _unreadable(self._data_path(name), e)
            return None

    def save(self, key, data):
        digest = hashlib.sha256(repr((key, self._source_stamp)).encode()).hexdigest()[:24]
        name = f"{self._index_name[:-len('.nbi')]}.{digest}.nbc"
        self._save_data(name, data)
        overloads = self._load_index()
        overloads[key] = name
        self._save_index(overloads)


def adopt():
    """Give every cached dispatcher of this package (its modules imported so far) the
    :class:`KeyedDataFile` naming. Runs once the kernel modules are imported, before
    any kernel is called."""
    prefix = __name__.rsplit(".", 1)[0] + "."
    for name, mod in list(sys.modules.items()):
        if not name.startswith(prefix) or mod is None:
            continue
        for obj in vars(mod).values():
            cache = getattr(obj, "_cache", None) if isinstance(obj, Dispatcher) else None
            cache_file = getattr(cache, "_cache_file", None)
            if type(cache_file) is caching.IndexDataCacheFile and \
                    isinstance(cache._impl.locator, _PackageKeyed):
                cache_file.__class__ = KeyedDataFile
                if type(cache) is caching.FunctionCache:
                    cache.__class__ = MissOnBadEntry


class MissOnBadEntry(caching.FunctionCache):
    """numba's function cache, where an entry that unpickles but cannot be rebuilt (a
    corrupted data file) is a miss too."""

    def _load_overload(self, sig, target_context):
        try:
            return super()._load_overload(sig, target_context)
        except Exception as e:  # noqa: BLE001 - a corrupt entry is recompiled
            _unreadable(f"an entry of {self._cache_path}{os.sep}"
                        f"{self._cache_file._index_name}", e)
            return None


def install():
    """Put this package's locators in front of numba's (in numba's own order of
    preference). Must run before the first ``@njit(cache=True)`` of the package: numba
    picks a function's locator when its dispatcher is created."""
    classes = caching.CacheImpl._locator_classes
    for cls in (UserWideLocator, InTreeLocator, UserProvidedLocator):
        if cls not in classes:
            classes.insert(0, cls)
    if TempDirLocator not in classes:  # after numba's own, which never take ours
        classes.append(TempDirLocator)
