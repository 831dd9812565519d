"""Localization: where a pair's incorrect trace goes wrong, from seeded rollouts of its exact prefixes."""
