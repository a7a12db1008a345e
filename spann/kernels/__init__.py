"""Pure numba kernels and their registries: distances, metrics, top-k, prefetch, exact search.

No I/O and no index state: every function takes arrays and returns arrays."""
