from __future__ import annotations

from cot_patching.traces.prompt import PROMPT_TEMPLATE, build_prompt, encode_prompt

EXPECTED = (
    "You are a careful solver. Solve with explicit steps.\n\nFormat STRICTLY:\nStep 1: ...\nStep 2: ...\n"
    "(add steps as needed)\nFinal Answer: <one token/number/string>\n\nProblem: {QUESTION}"
)


def test_template_is_exact():
    assert PROMPT_TEMPLATE == EXPECTED
    assert build_prompt("What is 2+2?").endswith("Problem: What is 2+2?")
    assert not build_prompt("x").startswith("\n") and not build_prompt("x").endswith("\n")


def test_chat_template_single_user_turn(smollm2_tokenizer):
    prompt = build_prompt("What is 2+2?")
    encoded = encode_prompt(smollm2_tokenizer, prompt)
    assert encoded.chat_template_applied and encoded.text == prompt
    reference = smollm2_tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
    reference = reference["input_ids"] if hasattr(reference, "keys") else reference
    assert encoded.token_ids == list(reference)
    bos = smollm2_tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert encoded.token_ids[0] == bos and encoded.token_ids[1] != bos
    assert smollm2_tokenizer.decode(encoded.token_ids).endswith("<|im_start|>assistant\n")


def test_raw_prompt_without_chat_template(mistral_tokenizer):
    assert not mistral_tokenizer.chat_template
    encoded = encode_prompt(mistral_tokenizer, build_prompt("What is 2+2?"))
    assert not encoded.chat_template_applied
    assert mistral_tokenizer.decode(encoded.token_ids, skip_special_tokens=True) == build_prompt("What is 2+2?")
