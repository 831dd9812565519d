"""Decoding: seeded sampling (batch 1 and batched), KV caches and CUDA graphs. Replays pick the decoder a record names."""
