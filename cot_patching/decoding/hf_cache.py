"""How a Hugging Face model takes and returns its KV cache, across transformers releases.

transformers 5.24 renamed the forward's `past_key_values` keyword to `cache` (and the output field with it); the old
name is still accepted with a FutureWarning until 5.40. Every forward we run with a cache passes it under the
keyword the model's own signature declares, so a rename is followed, not warned about, and a model whose forward
takes neither is refused instead of silently decoding without its cache.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

CACHE_KEYWORDS = ("cache", "past_key_values")  # newest first


class CacheApiError(RuntimeError):
    """A model whose forward takes its KV cache under no keyword we know."""


def cache_keyword(hf_model: Any) -> str:
    """The keyword `hf_model.forward` (a model or its class) takes its KV cache under (`cache` from transformers 5.24)."""
    return _class_cache_keyword(hf_model if isinstance(hf_model, type) else type(hf_model))


@functools.lru_cache(maxsize=None)
def _class_cache_keyword(model_class: Any) -> str:
    """Read once per class: `LoadedModel.step` asks at every decode step."""
    parameters = inspect.signature(model_class.forward).parameters
    for keyword in CACHE_KEYWORDS:
        if keyword in parameters:
            return keyword
    raise CacheApiError(f"{model_class.__name__}.forward takes none of {', '.join(CACHE_KEYWORDS)}: this "
                        "transformers release changed the KV-cache API; install the versions in constraints.txt")


def output_cache(output: Any) -> Any:
    """The KV cache a forward returned (`output.cache` on transformers >= 5.24, else `output.past_key_values`)."""
    fields = output.keys() if hasattr(output, "keys") else ()
    return output["cache"] if "cache" in fields else output.past_key_values
