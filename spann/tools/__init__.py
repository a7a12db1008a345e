"""Tools over a built index: evaluation (recall, latency, sweeps) and full verification."""
