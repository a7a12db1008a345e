"""Updates of a built index: add, delete and list splits, each batch one atomic generation."""
