"""The exact seed prompt and the token ids the model sees for it (SPEC §3)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

PROMPT_LINES = (
    "You are a careful solver. Solve with explicit steps.",
    "",
    "Format STRICTLY:",
    "Step 1: ...",
    "Step 2: ...",
    "(add steps as needed)",
    "Final Answer: <one token/number/string>",
    "",
    "Problem: {QUESTION}",
)
PROMPT_TEMPLATE = "\n".join(PROMPT_LINES)
PROMPT_TEMPLATE_SHA256 = hashlib.sha256(PROMPT_TEMPLATE.encode()).hexdigest()


@dataclass(frozen=True)
class EncodedPrompt:
    """The prompt text, the ids fed to the model, and whether a chat template produced them."""

    text: str
    token_ids: list[int]
    chat_template_applied: bool


def build_prompt(question: str) -> str:
    """The seed prompt with `{QUESTION}` replaced."""
    return PROMPT_TEMPLATE.replace("{QUESTION}", question)


def encode_prompt(tokenizer: Any, prompt: str) -> EncodedPrompt:
    """Token ids for `prompt`: the single user turn of the chat template if there is one, else raw."""
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        return EncodedPrompt(text=prompt, token_ids=list(ids), chat_template_applied=True)
    ids = tokenizer(prompt)["input_ids"]
    return EncodedPrompt(text=prompt, token_ids=list(ids), chat_template_applied=False)


def question_of(prompt: str) -> str | None:
    """The question a seed prompt was built from (None if `prompt` is not one)."""
    prefix, _, suffix = PROMPT_TEMPLATE.partition("{QUESTION}")
    if not prompt.startswith(prefix) or not prompt.endswith(suffix):
        return None
    return prompt[len(prefix):len(prompt) - len(suffix)]
