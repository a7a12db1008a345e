"""The on-disk contract: byte layout of posting lists, zarr v3 metadata and shards, labels.

Pure functions of bytes; nothing here opens a file of an index."""
