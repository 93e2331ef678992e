"""`use_causal_attention`: on right-padded batches, attention with no mask gives every real
token the logits and the loss that transformers' masked SDPA gives (CPU, float32), while the
mask really is gone (pad positions now see other pads). bench/train_gpu.py's `causal` variant
measures what it is for: a compiled step that no longer attends through a materialized mask."""

from __future__ import annotations

import copy

import pytest

from flywheel.causal_attention import NAME, use_causal_attention

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def models():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    masked = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa"))
    causal = copy.deepcopy(masked)
    use_causal_attention(causal)
    return masked, causal


def right_padded_batch():
    """Three rows of 24 tokens, two of them right-padded (as `sft.collate` pads): real lengths 24, 15 and 6."""
    tokens = torch.randint(0, 300, (3, 24), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(tokens)
    for row, length in ((1, 15), (2, 6)):
        tokens[row, length:], mask[row, length:] = 0, 0
    return tokens, torch.where(mask.bool(), tokens, -100), mask


def test_on_right_padded_batches_every_real_token_gets_the_masked_logits_and_loss(models):
    masked, causal = models
    tokens, labels, mask = right_padded_batch()
    with torch.no_grad():
        expected = masked(input_ids=tokens, labels=labels, attention_mask=mask)
        got = causal(input_ids=tokens, labels=labels, attention_mask=mask)

    assert causal.config._attn_implementation == NAME and masked.config._attn_implementation == "sdpa"
    real = mask.bool()
    assert torch.allclose(got.logits[real], expected.logits[real], atol=1e-5)
    assert got.loss.item() == pytest.approx(expected.loss.item(), rel=1e-6)
    assert not torch.allclose(got.logits[~real], expected.logits[~real], atol=1e-3)  # no mask: pads see pads


def test_the_gradients_match_too(models):
    tokens, labels, mask = right_padded_batch()
    grads = []
    for model in models:
        model.zero_grad(set_to_none=True)
        model(input_ids=tokens, labels=labels, attention_mask=mask).loss.backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    expected, got = grads
    assert all(torch.allclose(got[name], expected[name], atol=1e-6) for name in expected)


def test_a_model_whose_attention_is_more_than_causal_is_left_as_it_was():
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    shape = {"vocab_size": 300, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "attn_implementation": "sdpa"}
    windowed = MistralForCausalLM(MistralConfig(**shape, sliding_window=8))
    assert not use_causal_attention(windowed) and windowed.config._attn_implementation == "sdpa"
    unwindowed = Qwen2ForCausalLM(Qwen2Config(**shape, sliding_window=8, use_sliding_window=False))
    assert use_causal_attention(unwindowed) and unwindowed.config._attn_implementation == NAME
