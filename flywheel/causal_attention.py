"""Causal attention with no mask, for training on right-padded batches.

Under `torch.compile` on torch < 2.14, transformers never drops the attention mask it builds
for SDPA (`masking_utils._ignore_causal_mask_sdpa`), even when no token is padded: every
compiled step then attends through a materialized (batch, 1, seq, seq) mask, which rules out the
causal kernels, computes the masked half of every score matrix and repeats the grouped keys and
values. On an H200 that was 124 of the step's 469 ms (bench/train_gpu.py, `--profile`).

With right padding (`sft.collate`) and no cache, causal attention alone gives every real token
exactly the context the mask gives it: a token sees only earlier positions, and pads come after
every real token. Pads then see one another, but they carry no labels, so the loss and its
gradients are the same. Generation (left padding, a cache) must not use it: it is for training.
"""

from __future__ import annotations

from typing import Any

NAME = "flywheel_causal_sdpa"


def causal_sdpa(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    """A transformers attention function: SDPA with `is_causal` and grouped keys as they are.
    `attention_mask` is None here (transformers builds none for an implementation it has no mask
    function for) and ignored either way."""
    import torch

    output = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=key.shape[1] != query.shape[1])
    return output.transpose(1, 2).contiguous(), None


def use_causal_attention(model: Any) -> bool:
    """Switch a transformers model (or a peft model's `get_base_model()`: only its attention
    implementation changes, so before or after wrapping) to `causal_sdpa`. False, leaving it as
    it was, where its attention is more than causal: a sliding window (Mistral v0.1, Gemma's
    local layers) or soft-capped logits would be lost."""
    from transformers import AttentionInterface

    config = model.config
    window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    if (window is not None or "sliding_attention" in (getattr(config, "layer_types", None) or ())
            or getattr(config, "attn_logit_softcapping", None)):
        return False
    AttentionInterface.register(NAME, causal_sdpa)
    model.set_attn_implementation(NAME)
    return True
