"""Mining policy and its runs: the miner, shards and their workers, merge, validate, repair, the label cross-check."""
