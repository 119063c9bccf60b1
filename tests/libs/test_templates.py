"""Chat-template helpers against real templates: SmolLM2's ChatML (from the converted default
model) and DeepSeek- / Llama-3-style templates written inline on small local tokenizers."""

from __future__ import annotations

import pytest

from libs.engines.templates import chat_prompt, end_of_turn_stops, scratch_prefix

# DeepSeek-V3/R1 style: special-token turn markers, BOS first, no closing marker on user turns.
DEEPSEEK_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '<｜Assistant｜>' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"
)

# DeepSeek-Math-Instruct style: plain-text role headers, a default system line.
DEEPSEEK_MATH_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] != 'system' %}{{ 'You are a careful mathematician.\n\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}"
    "{% elif message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# Llama-3 style: header tokens, <|eot_id|> closes every turn, content trimmed.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def _tokenizer(template: str, bos: str, eos: str, specials: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, unk_token="[UNK]", extra_special_tokens=specials
    )
    tok.chat_template = template
    return tok


@pytest.fixture(scope="module")
def deepseek():
    return _tokenizer(
        DEEPSEEK_TEMPLATE, "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", ["<｜User｜>", "<｜Assistant｜>"]
    )


@pytest.fixture(scope="module")
def deepseek_math():
    return _tokenizer(DEEPSEEK_MATH_TEMPLATE, "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", [])


@pytest.fixture(scope="module")
def llama3():
    return _tokenizer(
        LLAMA3_TEMPLATE,
        "<|begin_of_text|>",
        "<|end_of_text|>",
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    )


def test_deepseek_prefix_and_stops(deepseek):
    assert scratch_prefix(deepseek) == "<｜begin▁of▁sentence｜><｜User｜>"
    # The model ends a question by opening the assistant turn; answers end with EOS.
    assert end_of_turn_stops(deepseek) == ["<｜Assistant｜>", "<｜end▁of▁sentence｜>"]
    prompt = chat_prompt(deepseek, [{"role": "user", "content": "What is 1+1?"}])
    assert prompt == "<｜begin▁of▁sentence｜><｜User｜>What is 1+1?<｜Assistant｜>"
    assert prompt.startswith(scratch_prefix(deepseek))


def test_plain_text_headers(deepseek_math):
    assert scratch_prefix(deepseek_math) == "<｜begin▁of▁sentence｜>You are a careful mathematician.\n\nUser: "
    # No marker closes a user turn, so the next turn's header is the stop.
    assert end_of_turn_stops(deepseek_math) == ["Assistant:", "<｜end▁of▁sentence｜>"]
    no_gen = chat_prompt(deepseek_math, [{"role": "user", "content": "Hi"}], add_generation_prompt=False)
    assert not no_gen.endswith("Assistant:")


def test_llama3_prefix_and_stops(llama3):
    assert scratch_prefix(llama3) == "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    assert end_of_turn_stops(llama3) == ["<|eot_id|>", "<|end_of_text|>"]
    prompt = chat_prompt(llama3, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi "}])
    assert prompt.endswith("<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                           "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_no_template_is_a_clear_error(llama3):
    import copy

    tok = copy.deepcopy(llama3)
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        scratch_prefix(tok)
    assert end_of_turn_stops(tok) == ["<|end_of_text|>"]


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoTokenizer

    from libs.models.default_model import ensure_default_model

    return AutoTokenizer.from_pretrained(str(ensure_default_model()), local_files_only=True)


@pytest.mark.model
def test_smollm2_chatml(smollm2):
    prefix = scratch_prefix(smollm2)
    assert prefix == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\n"
    )
    assert end_of_turn_stops(smollm2) == ["<|im_end|>"]  # also SmolLM2's EOS
    prompt = chat_prompt(smollm2, [{"role": "user", "content": "What is 2+2?"}])
    assert prompt == prefix + "What is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    # An explicit system turn replaces the default one.
    custom = chat_prompt(smollm2, [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}])
    assert custom.startswith("<|im_start|>system\nBe terse.<|im_end|>\n") and "SmolLM" not in custom
