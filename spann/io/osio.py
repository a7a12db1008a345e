"""Operating-system calls the read path needs: address-space reservation, fixed file maps,
madvise (from Python and from numba kernels), page-cache eviction.

The numba side (:func:`madvise_nb`) calls libc's ``madvise`` by symbol name, so kernels that use
it stay cacheable (no function address is baked into the compiled code).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["PAGE", "MADV_NORMAL", "MADV_RANDOM", "MADV_WILLNEED", "MADV_DONTNEED", "reserve", "map_file_fixed",
           "unmap", "reserve_writable", "madvise", "madvise_nb", "evict_files", "populate", "touch_pages",
           "MADV_SEQUENTIAL", "MADV_POPULATE_READ", "syscall_nb", "errno_nb", "release_free_heap"]

PAGE = mmap.PAGESIZE
MADV_NORMAL, MADV_RANDOM, MADV_SEQUENTIAL, MADV_WILLNEED, MADV_DONTNEED = 0, 1, 2, 3, 4
MADV_POPULATE_READ = 22  # Linux >= 5.14
_PROT_NONE, _PROT_READ, _PROT_WRITE = 0, 1, 2
_MAP_SHARED, _MAP_PRIVATE, _MAP_FIXED, _MAP_ANONYMOUS, _MAP_NORESERVE = 0x01, 0x02, 0x10, 0x20, 0x4000
_MAP_FAILED = ctypes.c_void_p(-1).value

_libc = None


def _c():
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.mmap.restype = ctypes.c_void_p
        lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        lib.munmap.restype = ctypes.c_int
        lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.madvise.restype = ctypes.c_int
        lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _libc = lib
    return _libc


def _fail(what: str) -> OSError:
    e = ctypes.get_errno()
    return OSError(e, f"{what}: {os.strerror(e)}")


def reserve(nbytes: int) -> int:
    """Reserve ``nbytes`` of address space (no memory, no access); returns its address."""
    a = _c().mmap(None, nbytes, _PROT_NONE, _MAP_PRIVATE | _MAP_ANONYMOUS | _MAP_NORESERVE, -1, 0)
    if a in (None, _MAP_FAILED):
        raise _fail(f"reserving {nbytes} bytes of address space")
    return int(a)


def reserve_writable(nbytes: int) -> int:
    """``nbytes`` of zero-filled, writable address space; memory is committed only where
    written (and given back with MADV_DONTNEED). Returns its address."""
    a = _c().mmap(None, nbytes, _PROT_READ | _PROT_WRITE, _MAP_PRIVATE | _MAP_ANONYMOUS | _MAP_NORESERVE, -1, 0)
    if a in (None, _MAP_FAILED):
        raise _fail(f"reserving {nbytes} bytes of address space")
    return int(a)


def map_file_fixed(addr: int, nbytes: int, fd: int, offset: int = 0) -> None:
    """Map ``nbytes`` of file ``fd`` from ``offset`` (page-aligned) read-only at ``addr``
    (inside a reservation)."""
    a = _c().mmap(ctypes.c_void_p(addr), nbytes, _PROT_READ, _MAP_SHARED | _MAP_FIXED, fd, offset)
    if a in (None, _MAP_FAILED) or int(a) != addr:
        raise _fail("mapping a posting shard")


def unmap(addr: int, nbytes: int) -> None:
    if _c().munmap(ctypes.c_void_p(addr), nbytes) != 0:
        raise _fail("unmapping postings")


def madvise(addr: int, nbytes: int, advice: int) -> None:
    start = addr - addr % PAGE
    if _c().madvise(ctypes.c_void_p(start), nbytes + (addr - start), advice) != 0:
        raise _fail("madvise")


@intrinsic
def madvise_nb(typingctx, addr, length, advice):
    """madvise_nb(addr, length, advice) -> int32 from numba code (addr page-aligned)."""
    sig = types.int32(types.int64, types.int64, types.int32)

    def codegen(context, builder, signature, args):
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.IntType(32), [i8p, ir.IntType(64), ir.IntType(32)])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "madvise")
        a = context.cast(builder, args[0], signature.args[0], types.int64)
        n = context.cast(builder, args[1], signature.args[1], types.int64)
        v = context.cast(builder, args[2], signature.args[2], types.int32)
        return builder.call(fn, [builder.inttoptr(a, i8p), n, v])

    return sig, codegen


@intrinsic
def syscall_nb(typingctx, nr, a1, a2, a3, a4, a5):
    """syscall_nb(nr, a1, ..., a5) -> int64: libc's ``syscall`` from numba code (integer
    arguments; -1 with :func:`errno_nb` set on failure)."""
    sig = types.int64(types.int64, types.int64, types.int64, types.int64, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        fnty = ir.FunctionType(i64, [i64], var_arg=True)
        fn = cgutils.get_or_insert_function(builder.module, fnty, "syscall")
        vals = [context.cast(builder, a, t, types.int64) for a, t in zip(args, signature.args)]
        return builder.call(fn, vals)

    return sig, codegen


@intrinsic
def errno_nb(typingctx):
    """errno_nb() -> int32: this thread's errno (glibc's ``__errno_location``), from numba code."""
    sig = types.int32()

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(i32.as_pointer(), [])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "__errno_location")
        return builder.load(builder.call(fn, []))

    return sig, codegen


@numba.njit(cache=True, nogil=True)
def touch_pages(u8, start, end):
    """Read one byte of every 4 KiB page of ``u8[start:end]`` (uint8); returns their sum, so the
    reads are not optimised away."""
    s = 0
    for i in range(start, end, 4096):
        s += u8[i]
    return s


def populate(addr: int, nbytes: int, u8=None) -> None:
    """Read a mapped range in and map all of its pages into this process (page-table entries
    included, so later reads take no page fault): ``MADV_POPULATE_READ``; on kernels without it
    (EINVAL), touch one byte per page of ``u8`` (the uint8 array over the whole map) from ``addr``.
    Any other failure (e.g. EFAULT: the file shrank under the map) raises OSError."""
    start = addr - addr % PAGE
    if _c().madvise(ctypes.c_void_p(start), nbytes + (addr - start), MADV_POPULATE_READ) == 0:
        return
    if ctypes.get_errno() != errno.EINVAL or u8 is None:
        raise _fail("madvise(MADV_POPULATE_READ)")
    at = addr - u8.ctypes.data  # the range lies inside u8's map
    touch_pages(u8, at, at + nbytes)


def release_free_heap() -> None:
    """Give the heap's free memory back to the system (glibc's ``malloc_trim``; nothing
    elsewhere). Opening an index reads and converts its arrays through temporaries several
    times the size of what it keeps; glibc keeps freed blocks below its (adaptive) mmap
    threshold in the heap, where they count as the process's memory (on a 10^6-vector index:
    25 MiB resident for 12 MiB of arrays before the trim, 16 MiB after)."""
    try:
        trim = _c().malloc_trim
    except AttributeError:  # not glibc
        return
    trim(ctypes.c_size_t(0))


def evict_files(paths) -> None:
    """Drop these files' pages from the page cache (``POSIX_FADV_DONTNEED``; no root needed).
    Pages still mapped by a process stay resident: MADV_DONTNEED them first."""
    for f in paths:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
