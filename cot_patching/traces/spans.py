"""Map character spans of a decoded trace to the smallest token ranges that cover them (SPEC §6)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence


class Decoder(Protocol):
    def decode(self, token_ids: Sequence[int], **kwargs: object) -> str: ...


def decode_tokens(tokenizer: Decoder, token_ids: Sequence[int]) -> str:
    """The trace text: `decode(token_ids)` with special tokens skipped and no space clean-up."""
    return tokenizer.decode(
        list(token_ids), skip_special_tokens=True, clean_up_tokenization_spaces=False
    )


@dataclass(frozen=True)
class TokenOffsets:
    """Per token prefix k: how many characters of the text `token_ids[:k]` decodes to."""

    text: str
    covered: list[int]  # covered[k]: longest prefix of `text` that decode(token_ids[:k]) matches
    clean: list[bool]  # clean[k]: decode(token_ids[:k]) is exactly text[:covered[k]] (no split character)

    @classmethod
    def build(cls, tokenizer: Decoder, token_ids: Sequence[int]) -> TokenOffsets:
        """Decode every prefix of `token_ids` once and record how far each reaches."""
        text = decode_tokens(tokenizer, token_ids)
        covered, clean = [0], [True]
        for k in range(1, len(token_ids) + 1):
            prefix = decode_tokens(tokenizer, token_ids[:k])
            n = _common_prefix_length(prefix, text)
            covered.append(n)
            clean.append(n == len(prefix))
        return cls(text=text, covered=covered, clean=clean)

    def span(self, char_start: int, char_end: int) -> tuple[int, int]:
        """Smallest `[tok_start, tok_end)` whose decoded characters cover `text[char_start:char_end]`."""
        if not 0 <= char_start <= char_end <= len(self.text):
            raise ValueError(f"char span [{char_start}, {char_end}) outside text of {len(self.text)}")
        n_tokens = len(self.covered) - 1
        tok_start = max(
            k for k in range(n_tokens + 1) if self.clean[k] and self.covered[k] <= char_start
        )
        if char_end == char_start:
            return tok_start, tok_start
        tok_end = next(
            (k for k in range(tok_start + 1, n_tokens + 1) if self.covered[k] >= char_end), None
        )
        if tok_end is None:
            raise ValueError(f"char span [{char_start}, {char_end}) is not covered by the tokens")
        return tok_start, tok_end


def _common_prefix_length(a: str, b: str) -> int:
    limit = min(len(a), len(b))
    if a[:limit] == b[:limit]:
        return limit
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def token_spans(
    tokenizer: Decoder, token_ids: Sequence[int], char_spans: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """For each char span of `decode(token_ids)`, the smallest covering token range `[start, end)`."""
    offsets = TokenOffsets.build(tokenizer, token_ids)
    return [offsets.span(a, b) for a, b in char_spans]
