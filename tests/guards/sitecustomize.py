"""Started in the processes an unmarked test starts (tests/conftest.py puts this folder on their PYTHONPATH): an
import of TransformerLens there fails, since CI's hooked line would skip that test and never run the process."""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder

MESSAGE = ("a test not marked transformer_lens started a process that imports TransformerLens: mark the test "
           "@pytest.mark.transformer_lens (see MODEL_PROCESSES in tests/conftest.py)")


class _RefuseTransformerLens(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN201 (the importlib protocol)
        if name == "transformer_lens" or name.startswith("transformer_lens."):
            raise ImportError(MESSAGE)
        return None


sys.meta_path.insert(0, _RefuseTransformerLens())
