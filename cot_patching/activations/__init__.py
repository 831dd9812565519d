"""Residual activations of the mined pairs at their selected steps: caching and the lazy store."""
