"""Traces as text: the prompt, parsing into steps, scoring the answer, token spans, one trace's analysis (no torch)."""
