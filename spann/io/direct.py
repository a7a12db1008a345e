"""Reading byte ranges of an index array with O_DIRECT and Linux native AIO (no page cache).

The mapped read path (:mod:`spann.io.mapped`) asks the page cache for a query's pages (madvise
WILLNEED, one call per run of pages) and then faults them into the process. Which of the two
is faster depends on the device: some serve a batch of O_DIRECT reads in a fraction of the
buffered time, others take longer (measure both: ``benchmarks/bench_disk.py --direct-sweep``;
docs/benchmarks.md).

A :class:`DirectReader` reads page runs straight from the shard files into a buffer of its
own, the way DiskANN reads: one ``io_submit`` for all the runs of a request, one
``io_getevents`` to wait for them. Nothing enters the page cache, so every query reads from
the device (what a collection larger than RAM does anyway), and no read faults. A reader is
per thread (its buffer and AIO context are one query's scratch).

:class:`DirectReads` is what numba kernels see; :func:`direct_submit` and :func:`direct_wait`
are the kernels. A reader with ``ctx == 0`` (:func:`no_direct`) means "read through the map".
"""

from __future__ import annotations

import ctypes
import os
import platform
import weakref
from collections import namedtuple

import numba
import numpy as np

from spann.errors import ParameterError
from spann.format.layout import BRIDGE_PAGES, PAGE
from spann.io import osio

__all__ = ["DirectReads", "DirectReader", "no_direct", "direct_submit", "direct_wait", "direct_reset",
           "direct_poll", "direct_landed"]

#: (io_setup, io_destroy, io_submit, io_getevents) by machine
_SYSCALLS = {"x86_64": (206, 207, 209, 208), "aarch64": (0, 1, 2, 4), "arm64": (0, 1, 2, 4)}
_EINTR, _EAGAIN = 4, 11

DirectReads = namedtuple("DirectReads", ["ctx", "sys_submit", "sys_getevents", "fds", "ats", "lens", "shard_bytes",
                                         "iocbs", "iocbs_addr", "ptrs", "ptrs_addr", "events", "events_addr", "buf",
                                         "buf_addr", "state", "done"])
DirectReads.__doc__ = """A direct reader as numba sees it.

ctx: the AIO context (0: no direct reads, read through the map); sys_submit, sys_getevents:
syscall numbers; fds, ats, lens: int64 (S,) per shard of the array: O_DIRECT file descriptor
(-1: absent), offset of the shard's data in that file, data bytes; shard_bytes: int64;
iocbs: int64 (N, 8) request blocks (``struct iocb``); ptrs: int64 (N,) their addresses;
events: int64 (N, 4) completions (``struct io_event``); buf: uint8 (C,) the page-aligned read
buffer; *_addr: addresses of those arrays; state: int64 (4,) buffer bytes used, request blocks
used, reads in flight, 1 once the context failed (the reader must be replaced); done: int64 (N,)
1 where request block i's read has landed.
"""


def no_direct() -> DirectReads:
    """A :class:`DirectReads` that reads nothing (``ctx`` 0), typed like a real one."""
    z1 = np.zeros(0, np.int64)
    z2 = np.zeros((0, 8), np.int64)
    z4 = np.zeros((0, 4), np.int64)
    return DirectReads(ctx=np.int64(0), sys_submit=np.int64(0), sys_getevents=np.int64(0), fds=z1, ats=z1.copy(),
                       lens=z1.copy(), shard_bytes=np.int64(PAGE), iocbs=z2, iocbs_addr=np.int64(0), ptrs=z1.copy(),
                       ptrs_addr=np.int64(0), events=z4, events_addr=np.int64(0), buf=np.zeros(0, np.uint8),
                       buf_addr=np.int64(0), state=np.zeros(4, np.int64), done=z1.copy())


def _libc():
    lib = ctypes.CDLL(None, use_errno=True)
    lib.syscall.restype = ctypes.c_long
    return lib


def _release(ctx: int, buf_addr: int, buf_bytes: int, destroy: int, pid: int) -> None:
    if pid != os.getpid():  # a forked child: the AIO context is not this process's
        return
    if ctx:
        _libc().syscall(ctypes.c_long(destroy), ctypes.c_ulong(ctx))  # waits for reads in flight
    if buf_addr:
        osio.unmap(buf_addr, buf_bytes)


class DirectReader:
    """O_DIRECT reads of the array behind a :class:`spann.io.mapped.MappedBytes` (its shard
    files, opened once by :meth:`~spann.io.mapped.MappedBytes.direct_files`), at most
    ``n_requests`` page runs and ``buf_bytes`` bytes per query; ``reads`` is the
    :class:`DirectReads` kernels take. One per thread and process (:meth:`fits` is False in a
    forked child). Raises ParameterError where direct reads cannot work (not Linux x86-64 /
    arm64, a file system without O_DIRECT, shards not page-aligned in their file, no AIO
    context available)."""

    def __init__(self, mapped, n_requests: int, buf_bytes: int):
        where = mapped.where
        self.source = mapped
        calls = _SYSCALLS.get(platform.machine().lower()) if os.name == "posix" else None
        if calls is None or not hasattr(os, "O_DIRECT"):
            raise ParameterError(f"{where}: direct reads need Linux on x86-64 or arm64")
        self.n_requests, self.buf_bytes = int(n_requests), -(-int(buf_bytes) // PAGE) * PAGE
        self.pid = os.getpid()
        fds, ats, lens = mapped.direct_files()
        ctx = ctypes.c_ulong(0)
        if _libc().syscall(ctypes.c_long(calls[0]), ctypes.c_uint(self.n_requests), ctypes.byref(ctx)) != 0:
            e = ctypes.get_errno()
            raise ParameterError(f"{where}: no AIO context for direct reads ({os.strerror(e)}; see "
                                 f"/proc/sys/fs/aio-max-nr)")
        try:
            addr = osio.reserve_writable(self.buf_bytes)
        except BaseException:
            _release(ctx.value, 0, 0, calls[1], self.pid)
            raise
        self._finalizer = weakref.finalize(self, _release, ctx.value, addr, self.buf_bytes, calls[1], self.pid)
        buf = np.frombuffer((ctypes.c_uint8 * self.buf_bytes).from_address(addr), np.uint8)
        iocbs = np.zeros((self.n_requests, 8), np.int64)
        ptrs = np.zeros(self.n_requests, np.int64)
        events = np.zeros((self.n_requests, 4), np.int64)
        self.reads = DirectReads(ctx=np.int64(ctx.value), sys_submit=np.int64(calls[2]),
                                 sys_getevents=np.int64(calls[3]), fds=fds, ats=ats, lens=lens,
                                 shard_bytes=np.int64(mapped.shard_bytes), iocbs=iocbs,
                                 iocbs_addr=np.int64(iocbs.ctypes.data), ptrs=ptrs,
                                 ptrs_addr=np.int64(ptrs.ctypes.data),
                                 events=events, events_addr=np.int64(events.ctypes.data), buf=buf,
                                 buf_addr=np.int64(addr), state=np.zeros(4, np.int64),
                                 done=np.zeros(self.n_requests, np.int64))

    def fits(self, n_requests: int, buf_bytes: int) -> bool:
        """Usable (open, in this process, its context not failed) and large enough."""
        return (self.reads is not None and self.pid == os.getpid() and self.reads.state[3] == 0
                and n_requests <= self.n_requests and buf_bytes <= self.buf_bytes)

    def close(self) -> None:
        self.reads = None
        self._finalizer()


@numba.njit(cache=True, nogil=True)
def direct_reset(dr):
    """Start a query: the buffer and request blocks are free (waits for reads still in flight,
    e.g. of a query that raised)."""
    if dr.ctx == 0:
        return
    if dr.state[3] != 0:
        raise OSError("direct read: the reader's AIO context failed")
    if dr.state[2] > 0:
        _drain(dr)
    for i in range(dr.state[1]):
        dr.done[i] = 0
    dr.state[0] = 0
    dr.state[1] = 0
    dr.state[2] = 0


@numba.njit(cache=True, nogil=True)
def direct_submit(dr, starts, nbytes, m, pos):
    """Read the byte ranges [starts[j], starts[j] + nbytes[j]) of the array (j < m, any order,
    each inside one shard; ranges of 0 bytes are skipped, their pos -1) into the buffer:
    ranges are merged into page runs (gaps of up to BRIDGE_PAGES pages read along, never across
    a shard) and all runs are submitted at once. ``pos`` (int64 (m,)) receives where range j's
    first byte will land in ``dr.buf``. Returns the bytes requested (whole pages); call
    :func:`direct_wait` before reading the buffer."""
    if m == 0:
        return 0
    o = np.argsort(starts[:m])
    SB = dr.shard_bytes
    first = dr.state[1]
    total = 0
    t = 0
    while t < m:
        j = o[t]
        if nbytes[j] <= 0:
            pos[j] = -1
            t += 1
            continue
        s = starts[j] // SB
        ra = starts[j] // PAGE * PAGE
        rb = starts[j] + nbytes[j]
        u = t + 1
        while u < m:
            jj = o[u]
            if nbytes[jj] > 0:
                if starts[jj] // SB != s or starts[jj] // PAGE > (rb - 1) // PAGE + 1 + BRIDGE_PAGES:
                    break
                rb = max(rb, starts[jj] + nbytes[jj])
            u += 1
        length = (rb - ra + PAGE - 1) // PAGE * PAGE
        b = dr.state[0]
        i = dr.state[1]
        if (b + length > dr.buf.shape[0] or i >= dr.iocbs.shape[0] or s < 0 or s >= dr.fds.shape[0]
                or dr.fds[s] < 0 or rb > s * SB + dr.lens[s]):
            _drain(dr)
            raise OSError("direct read: the request exceeds the reader's buffer or lies outside the shards' data")
        for v in range(t, u):
            jj = o[v]
            pos[jj] = b + starts[jj] - ra if nbytes[jj] > 0 else -1
        # struct iocb: data, key|rw_flags, opcode(PREAD 0)|prio|fd, buf, nbytes, offset, reserved, flags|resfd
        dr.iocbs[i, 0] = rb - ra  # bytes the ranges need (the run's last page may pass the file's end)
        dr.iocbs[i, 1] = 0
        dr.iocbs[i, 2] = dr.fds[s] << 32
        dr.iocbs[i, 3] = dr.buf_addr + b
        dr.iocbs[i, 4] = length
        dr.iocbs[i, 5] = dr.ats[s] + ra - s * SB
        dr.iocbs[i, 6] = 0
        dr.iocbs[i, 7] = 0
        dr.ptrs[i] = dr.iocbs_addr + 64 * i
        dr.state[0] = b + length
        dr.state[1] = i + 1
        total += length
        t = u
    done = first
    tries = 0
    while done < dr.state[1]:
        r = osio.syscall_nb(dr.sys_submit, dr.ctx, dr.state[1] - done, dr.ptrs_addr + 8 * done, 0, 0)
        if r < 0:
            e = osio.errno_nb()
            tries += 1
            if e == _EAGAIN and dr.state[2] > 0:  # the context is full: let some reads land first
                if _events(dr, 1) < 0:
                    _drain(dr)
                    raise OSError("direct read failed or came back short (index files changed or damaged?)")
                continue
            if (e == _EINTR or e == _EAGAIN) and tries < 1000:
                continue
            _drain(dr)
            raise OSError("direct read: io_submit failed")
        done += r
        dr.state[2] += r
    return total


@numba.njit(cache=True, nogil=True)
def _events(dr, min_nr):
    """Collect completions (waiting for at least ``min_nr``), marking their request blocks
    done; returns how many were collected, -1 if a read failed or came back short, -2 if the
    context failed."""
    while True:
        r = osio.syscall_nb(dr.sys_getevents, dr.ctx, min_nr, dr.events.shape[0], dr.events_addr, 0)
        if r >= 0:
            break
        if osio.errno_nb() != _EINTR:
            return -2
    ok = True
    for e in range(r):
        dr.done[(dr.events[e, 1] - dr.iocbs_addr) >> 6] = 1  # obj: the request block's address
        if dr.events[e, 2] < dr.events[e, 0]:  # res < bytes needed (aio_data)
            ok = False
    dr.state[2] -= r
    return r if ok else -1


@numba.njit(cache=True, nogil=True)
def _collect(dr):
    """Wait for every read in flight; returns False if one failed or came back short."""
    ok = True
    while dr.state[2] > 0:
        r = _events(dr, dr.state[2])
        if r == -2:
            dr.state[3] = 1  # the context is unusable; reads may still land: never reuse the buffer
            return False
        if r == -1:
            ok = False
    return ok


@numba.njit(cache=True, nogil=True)
def _drain(dr):
    _collect(dr)
    dr.state[2] = 0


@numba.njit(cache=True, nogil=True)
def direct_wait(dr):
    """Wait until every submitted read has landed in the buffer; raises OSError if one failed
    (e.g. the file shrank) or came back short."""
    if not _collect(dr):
        dr.state[2] = 0
        raise OSError("direct read failed or came back short (index files changed or damaged?)")


@numba.njit(cache=True, nogil=True)
def direct_poll(dr, block):
    """Collect the reads that have landed (``block``: wait for at least one if any is in
    flight); raises OSError as :func:`direct_wait` does."""
    if dr.state[2] == 0:
        return
    r = _events(dr, 1 if block else 0)
    if r < 0:
        if r == -1:
            _drain(dr)
        else:
            dr.state[3] = 1
        dr.state[2] = 0
        raise OSError("direct read failed or came back short (index files changed or damaged?)")


@numba.njit(cache=True, nogil=True)
def direct_landed(dr, pos):
    """Whether the bytes at buffer position ``pos`` (from :func:`direct_submit`) have landed:
    runs fill the buffer in request-block order, so pos lies in the last block starting at or
    before it."""
    lo = 0
    hi = dr.state[1]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if dr.iocbs[mid, 3] - dr.buf_addr <= pos:
            lo = mid
        else:
            hi = mid
    return dr.done[lo] != 0
