"""A 2-layer random Llama and a byte-level BPE tokenizer trained in-test that knows ChatML's
markers: the model tests train, merge and load (the `tiny_model` fixture, tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

from flywheel.chat_templates import chat_template_path

TEMPLATE = Path(chat_template_path("chatml_tools")).read_text()
TOOLS = [{"type": "function", "function": {"name": "get_order_status", "parameters": {
    "type": "object", "properties": {"order_id": {"type": "string"}}}}}]


def conversation(i: int) -> dict:
    call = {"type": "function", "function": {"name": "get_order_status", "arguments": json.dumps({"order_id": f"O{i}"})}}
    return {"messages": [{"role": "user", "content": f"where is order O{i}?"},
                         {"role": "assistant", "content": "", "tool_calls": [call]}],
            "tools": TOOLS if i % 2 else []}


def build(path: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    corpus = [TEMPLATE, json.dumps(TOOLS)] + [json.dumps(conversation(i)) for i in range(50)]
    tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         initializer_range=0.3)  # frozen random lm_head: logits must be able to get large
    LlamaForCausalLM(config).save_pretrained(path)
    return path
