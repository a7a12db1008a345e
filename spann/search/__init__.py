"""Search: the head search, the pruner stage, the posting scan with replica de-dup, re-rank."""
