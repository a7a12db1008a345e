"""Benchmark-only code, kept out of the library's import path: peer wrappers (faiss, hnswlib,
DiskANN through its own interpreter, brute force), the side-by-side runner behind
``spann bench``, and ann-benchmarks / big-ann-benchmarks adapters."""
