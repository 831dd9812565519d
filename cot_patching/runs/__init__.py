"""A mining run on disk: typed records (runs, pairs, manifest), crash-safe files, the run tally, loading pairs."""
