"""Numba's on-disk kernel cache, invalidated by a change anywhere in the package.

numba checks a cached kernel against its own source file only. A kernel that inlines or calls
kernels of other modules (most of spann's do: search inlines postings, recent, topk...) would
keep running their old compiled code after those modules changed, e.g. after ``git pull`` in an
editable install; with a changed data layout that can crash. spann's kernels therefore use a
locator that stamps every cache entry with all of the package's source files (path, mtime,
size): any change recompiles every kernel once. The cache stays where numba puts it (the
package's ``__pycache__``; numba's user-wide cache when that is read-only, where the files do
not change). Other code's numba caches are untouched.
"""

from __future__ import annotations

import hashlib
import os

from numba.core import caching

__all__ = ["package_stamp", "install"]

_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the spann package
_stamp: str | None = None


def package_stamp(root: str = _PKG) -> str:
    """Hex digest of (relative path, mtime, size) of every .py file under ``root``."""
    h = hashlib.sha1()
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for f in sorted(files):
            if f.endswith(".py"):
                p = os.path.join(d, f)
                st = os.stat(p)
                h.update(f"{os.path.relpath(p, root)}:{st.st_mtime_ns}:{st.st_size};".encode())
    return h.hexdigest()


def install() -> bool:
    """Put the package-stamped locator first in numba's list; False if this numba lacks the
    hooks (then numba's own per-file caching applies)."""
    try:
        impl, base = caching.CacheImpl, caching.InTreeCacheLocator
        classes = impl._locator_classes
    except (ImportError, AttributeError):
        return False

    class SpannPackageLocator(base):
        def get_source_stamp(self):
            global _stamp
            if _stamp is None:
                _stamp = package_stamp()
            return _stamp

        @classmethod
        def from_function(cls, py_func, py_file):
            if not os.path.abspath(py_file).startswith(_PKG + os.sep):
                return None
            return super().from_function(py_func, py_file)

    if not any(c.__name__ == "SpannPackageLocator" for c in classes):
        classes.insert(0, SpannPackageLocator)
    return True


INSTALLED = install()  #: spann's kernels are cached with the package stamp
