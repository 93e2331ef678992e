"""The grouped CPU LoRA ops give what vLLM's per-token gather ops give.

The reference below is vLLM's torch_ops semantics written out (gather each token's
weights, batched matvec), with index -1 meaning "no adapter" (a zero contribution).
"""

import pytest
import torch

from serve import cpu_lora

MAX_LORAS, IN, OUT, RANK = 4, 24, 40, 8


def reference(inputs, weights, indices, dtype):
    if weights.dim() == 4:
        weights = weights.squeeze(1)
    padded = torch.cat([weights, torch.zeros_like(weights[:1])])  # slot -1 -> zeros
    gathered = padded[indices].to(dtype)
    return torch.einsum("bi, boi -> bo", inputs.to(dtype), gathered)


INDEX_SETS = {
    "one adapter": [2, 2, 2, 2, 2],
    "no adapter": [-1, -1, -1, -1, -1],
    "mixed": [0, -1, 3, 0, -1],
    "single token": [1],
}


@pytest.fixture(params=list(INDEX_SETS), ids=list(INDEX_SETS))
def indices(request):
    return torch.tensor(INDEX_SETS[request.param])


@pytest.fixture
def seeded():
    torch.manual_seed(0)


def test_shrink(seeded, indices):
    x = torch.randn(len(indices), IN)
    a = torch.randn(MAX_LORAS, 1, RANK, IN)
    out = torch.full((len(indices), RANK + 2), 7.0)
    cpu_lora.bgmv_shrink(x, a, out, indices, scaling=0.5)
    torch.testing.assert_close(out[:, :RANK], 0.5 * reference(x, a, indices, out.dtype))
    assert (out[:, RANK:] == 7.0).all()


@pytest.mark.parametrize("add_inputs", [True, False])
def test_expand(seeded, indices, add_inputs):
    x = torch.randn(len(indices), RANK)
    b = torch.randn(MAX_LORAS, 1, OUT, RANK)
    base = torch.randn(len(indices), OUT)
    out = base.clone()
    cpu_lora.bgmv_expand(x, b, out, indices, add_inputs=add_inputs)
    expected = reference(x, b, indices, out.dtype) + (base if add_inputs else 0)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("add_inputs", [True, False])
def test_expand_slice_touches_only_its_slice(seeded, indices, add_inputs):
    x = torch.randn(len(indices), RANK)
    b = torch.randn(MAX_LORAS, OUT, RANK)
    base = torch.randn(len(indices), 3 * OUT)
    out = base.clone()
    cpu_lora.bgmv_expand_slice(x, b, out, indices, OUT, OUT, add_inputs=add_inputs)
    expected = reference(x, b, indices, out.dtype) + (base[:, OUT:2 * OUT] if add_inputs else 0)
    torch.testing.assert_close(out[:, OUT:2 * OUT], expected)
    torch.testing.assert_close(out[:, :OUT], base[:, :OUT])
    torch.testing.assert_close(out[:, 2 * OUT:], base[:, 2 * OUT:])


def test_bf16_weights_are_computed_in_the_output_dtype(seeded):
    indices = torch.tensor([0, 1, -1])
    x = torch.randn(3, IN, dtype=torch.bfloat16)
    a = torch.randn(MAX_LORAS, RANK, IN, dtype=torch.bfloat16)
    out = torch.zeros(3, RANK, dtype=torch.float32)
    cpu_lora.bgmv_shrink(x, a, out, indices)
    torch.testing.assert_close(out, reference(x, a, indices, torch.float32))


def test_register_replaces_the_cpu_ops_and_can_be_turned_off(monkeypatch):
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    originals = {name: getattr(lora_ops, name) for name in ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")}
    for module in (lora_ops, punica_cpu):
        for name, function in originals.items():
            monkeypatch.setattr(module, name, function)
    monkeypatch.setenv("FLYWHEEL_CPU_LORA_KERNELS", "0")
    cpu_lora.register()
    assert punica_cpu.bgmv_shrink is originals["bgmv_shrink"]
    monkeypatch.setenv("FLYWHEEL_CPU_LORA_KERNELS", "1")
    cpu_lora.register()
    assert punica_cpu.bgmv_shrink is cpu_lora.bgmv_shrink
    assert lora_ops.bgmv_expand_slice is cpu_lora.bgmv_expand_slice


def test_all_zero_slots_are_skipped_and_in_place_loads_are_seen(seeded):
    """vLLM loads an adapter by writing into the stacked tensor in place: a slot that was
    zero (and so skipped) must be used as soon as weights land in it."""
    indices = torch.tensor([2, 2, -1, 1])
    x = torch.randn(4, IN)
    a = torch.randn(MAX_LORAS, 1, RANK, IN)
    a[2].zero_()
    out = torch.empty(4, RANK)
    cpu_lora.bgmv_shrink(x, a, out, indices)
    torch.testing.assert_close(out, reference(x, a, indices, out.dtype))
    assert (out[:3] == 0).all()

    a[2].copy_(torch.randn(1, RANK, IN))  # an adapter loads into slot 2
    cpu_lora.bgmv_shrink(x, a, out, indices)
    torch.testing.assert_close(out, reference(x, a, indices, out.dtype))
    assert (out[:2] != 0).any()

    a[:, :, :, :].zero_()  # every slot reset: nothing to add
    base = torch.randn(4, OUT)
    expanded = base.clone()
    cpu_lora.bgmv_expand(torch.randn(4, RANK), torch.zeros(MAX_LORAS, OUT, RANK), expanded, indices)
    torch.testing.assert_close(expanded, base)
