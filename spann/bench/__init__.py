"""Benchmark-only code, kept out of the library's import path: peer wrappers (faiss, hnswlib,
DiskANN through its own interpreter, brute force), the side-by-side runner behind
``spann bench``, and the range server of object-store benchmarks. The ann-benchmarks and
big-ann-benchmarks wrappers live in the repository's ``benchmarks/`` (they are copied into
those harnesses, not imported from here)."""
