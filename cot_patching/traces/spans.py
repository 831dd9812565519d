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
        """Record how far each prefix's text reaches, decoding a few tokens per prefix (O(n) decodes of O(1) tokens).

        The text of prefix k is assembled as the text of the last prefix j that ended on a whole character plus what
        tokens j..k add, decoded in a window that starts `CONTEXT_TOKENS` before j (so a tokenizer's rule for the
        first token of a text, such as dropping a leading space, applies to the same token as in a full decode). If
        the assembled text of the whole trace is not the trace's text, every prefix is decoded in full instead.
        """
        ids = list(token_ids)
        text = decode_tokens(tokenizer, ids)
        pieces = _assembled_prefixes(tokenizer, ids, text)
        if pieces is None:
            pieces = [(0, decode_tokens(tokenizer, ids[:k])) for k in range(1, len(ids) + 1)]
        covered, clean = [0], [True]
        for base, tail in pieces:
            n = base + _common_prefix_length(tail, text[base:])
            covered.append(n)
            clean.append(n == base + len(tail))
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


CONTEXT_TOKENS = 4  # tokens decoded before each window, so that the window's first-token rules fall on them
MAX_PENDING = 8  # tokens a window may grow while the prefix text ends inside a character; then it is taken as is


def _assembled_prefixes(tokenizer: Decoder, ids: list[int], text: str) -> list[tuple[int, str]] | None:
    """For each prefix k >= 1: (length of the text of the last whole-character prefix j, what tokens j..k add), so
    that the text of prefix k is text[:base] + tail; None when the pieces do not reassemble `text`."""
    pieces: list[tuple[int, str]] = []
    assembled, stable = "", 0
    before_stable, before = 0, ""  # the context's text, decoded again only when `stable` moves
    for k in range(1, len(ids) + 1):
        start = max(0, stable - CONTEXT_TOKENS)
        if before_stable != stable:
            before, before_stable = decode_tokens(tokenizer, ids[start:stable]), stable
        window = decode_tokens(tokenizer, ids[start:k])
        if not window.startswith(before):
            return None
        tail = window[len(before):]
        pieces.append((len(assembled), tail))
        if not tail.endswith("\ufffd") or k - stable >= MAX_PENDING:
            assembled += tail
            stable = k
    if pieces and text != assembled[:pieces[-1][0]] + pieces[-1][1]:
        return None
    return pieces


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
