"""The grouped CPU LoRA ops give what vLLM's per-token gather ops give.

The reference below is vLLM's torch_ops semantics written out (gather each token's
weights, batched matvec), with index -1 meaning "no adapter" (a zero contribution).
"""

from types import SimpleNamespace

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


SLICES = (OUT, 16, OUT)  # a fused q/k/v projection's output slices


def linear_reference(y, x, a_stacked, b_stacked, indices, scale):
    """vLLM's add_lora_linear: per slice, shrink in float32 into a buffer, expand in y's dtype."""
    out, offset = y.clone(), 0
    for a, b, size in zip(a_stacked, b_stacked, SLICES, strict=True):
        shrunk = scale * reference(x, a, indices, torch.float32)
        out[:, offset:offset + size] += reference(shrunk, b, indices, y.dtype)
        offset += size
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_lora_linear_gives_vllms_sums_slice_by_slice(seeded, indices, dtype):
    x = torch.randn(len(indices), IN, dtype=dtype)
    a_stacked = tuple(torch.randn(MAX_LORAS, 1, RANK, IN, dtype=dtype) for _ in SLICES)
    b_stacked = tuple(torch.randn(MAX_LORAS, 1, size, RANK, dtype=dtype) for size in SLICES)
    a_stacked[1][2].zero_()  # slot 2 trains no k: skipped there, used elsewhere
    y = torch.randn(len(indices), sum(SLICES), dtype=dtype)
    expected = linear_reference(y, x, a_stacked, b_stacked, indices, 0.5)
    cpu_lora.add_lora_linear(SimpleNamespace(token_lora_indices=indices), y, x, a_stacked, b_stacked, 0.5, SLICES)
    torch.testing.assert_close(y, expected)


def test_add_lora_linear_sees_the_next_steps_indices_and_in_place_loads(seeded):
    """vLLM writes each step's token indices, and a newly loaded adapter's weights, into
    the same tensors in place: neither may be answered from the previous step's cache."""
    buffer = torch.tensor([0, 0, 0, 0, 9, 9])
    wrapper = SimpleNamespace(token_lora_indices=buffer[:4])
    a_stacked = tuple(torch.randn(MAX_LORAS, 1, RANK, IN) for _ in SLICES)
    b_stacked = tuple(torch.randn(MAX_LORAS, 1, size, RANK) for size in SLICES)
    for a in a_stacked:
        a[3].zero_()
    x = torch.randn(4, IN)
    for step, indices in enumerate(([0, 0, 0, 0], [3, -1, 0, 3], [3, 3, 3, 3])):
        if step == 2:
            for a in a_stacked:
                a[3].copy_(torch.randn(1, RANK, IN))  # an adapter loads into slot 3
        buffer[:4].copy_(torch.tensor(indices))
        y = torch.zeros(4, sum(SLICES))
        cpu_lora.add_lora_linear(wrapper, y, x, a_stacked, b_stacked, 1.0, SLICES)
        torch.testing.assert_close(y, linear_reference(torch.zeros(4, sum(SLICES)), x, a_stacked, b_stacked,
                                                       wrapper.token_lora_indices, 1.0))
        assert (y != 0).any()


def test_register_replaces_the_cpu_ops_and_can_be_turned_off(monkeypatch):
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    originals = {name: getattr(lora_ops, name) for name in ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")}
    for module in (lora_ops, punica_cpu):
        for name, function in originals.items():
            monkeypatch.setattr(module, name, function)
    linear = punica_cpu.PunicaWrapperCPU.add_lora_linear
    monkeypatch.setattr(punica_cpu.PunicaWrapperCPU, "add_lora_linear", linear)
    monkeypatch.setenv("FLYWHEEL_CPU_LORA_KERNELS", "0")
    cpu_lora.register()
    assert punica_cpu.bgmv_shrink is originals["bgmv_shrink"] and punica_cpu.PunicaWrapperCPU.add_lora_linear is linear
    monkeypatch.setenv("FLYWHEEL_CPU_LORA_KERNELS", "1")
    cpu_lora.register()
    assert punica_cpu.bgmv_shrink is cpu_lora.bgmv_shrink
    assert lora_ops.bgmv_expand_slice is cpu_lora.bgmv_expand_slice
    assert punica_cpu.PunicaWrapperCPU.add_lora_linear is cpu_lora.add_lora_linear


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


def test_a_new_tensor_at_a_freed_ones_address_gets_no_stale_cached_answer(seeded):
    """The caches are keyed by storage address and version; a freed index (or weight) tensor's
    address goes to the next tensor of its size, at the same version 0. Between tests that hit a
    stale entry (one test's adapter rows applied to another's 'no adapter' batch)."""
    x = torch.randn(5, IN)
    for _ in range(20):
        a_stacked = tuple(torch.randn(MAX_LORAS, 1, RANK, IN) for _ in SLICES)
        b_stacked = tuple(torch.randn(MAX_LORAS, 1, size, RANK) for size in SLICES)
        used, unused = torch.zeros(5, sum(SLICES)), torch.zeros(5, sum(SLICES))
        for indices, y in (([0] * 5, used), ([-1] * 5, unused)):  # the first index tensor is freed before the second
            cpu_lora.add_lora_linear(SimpleNamespace(token_lora_indices=torch.tensor(indices)), y, x, a_stacked,
                                     b_stacked, 1.0, SLICES)
        assert (used != 0).any() and not (unused != 0).any()
