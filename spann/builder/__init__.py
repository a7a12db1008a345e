"""The build pipeline: input vectors, stages, the spill of assignments, the Dask runner."""
