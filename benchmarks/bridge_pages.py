"""Is it cheaper to read two 4-page ranges g pages apart as two requests or as one bridged one?

Cold reads through a file map, as spann's searches make them (madvise WILLNEED per range, then
touch): 16 pairs in flight, page cache emptied before each trial, variants interleaved, 40
trials, medians. What ``spann.format.layout.BRIDGE_PAGES`` should be on this device::

    python benchmarks/bridge_pages.py INDEX.spann/postings/c/0   # any file of >= 64 MiB on the device
"""
import mmap
import os
import sys
import time

import numpy as np

path = sys.argv[1]
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
arr = np.frombuffer(mm, np.uint8)
rng = np.random.default_rng(1)
P, L, N = 4096, 4, 16
res = {}
for _rep in range(40):
    for g in (1, 2, 4, 8):
        for bridged in (False, True):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            mm.madvise(mmap.MADV_DONTNEED)
            starts = rng.choice(size // P // 64 - 1, N, replace=False) * 64
            t = time.perf_counter()
            for s in starts:
                s = int(s)
                if bridged:
                    mm.madvise(mmap.MADV_WILLNEED, s * P, (2 * L + g) * P)
                else:
                    mm.madvise(mmap.MADV_WILLNEED, s * P, L * P)
                    mm.madvise(mmap.MADV_WILLNEED, (s + L + g) * P, L * P)
            tot = 0
            for s in starts:
                s = int(s)
                tot += int(arr[s * P:(s + L) * P:P].sum()) + int(arr[(s + L + g) * P:(s + 2 * L + g) * P:P].sum())
            res.setdefault((g, bridged), []).append(time.perf_counter() - t)
for g in (1, 2, 4, 8):
    a, b = np.median(res[(g, False)]), np.median(res[(g, True)])
    print(f"gap {g}: two requests {a*1e3:.3f} ms, bridged {b*1e3:.3f} ms, bridged/two {b/a:.2f}")
