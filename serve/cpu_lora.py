"""Grouped LoRA matmuls for vLLM's CPU backend, installed as a vLLM general plugin.

vLLM-cpu's punica ops (`vllm.lora.ops.torch_ops`) gather a full copy of the LoRA
weights for every token (`weights[indices]`, then a batched einsum), and run even for
tokens that use no adapter (index -1). Measured here with SmolLM2-135M, batch 32: LoRA
enabled cut base throughput 389 -> 232 tok/s and adapter requests ran at 59 tok/s.
A serving batch holds few distinct adapters, so these versions do one GEMM per adapter
present, skip index -1 (vLLM's "no LoRA") and skip adapter slots that are all zeros for a
module (vLLM wraps every linear layer; an adapter usually trains a few) — the same
results (see tests/unit/test_cpu_lora.py), far less work.

Above the ops, `add_lora_linear` (what every wrapped linear layer calls) is replaced
too: vLLM's goes through a prefill path on every engine step (it expands per-sequence
indices back to per-token ones, and finds the adapters present, in each of the 2 x
slices calls per layer). Here the token groups are found once per step (the indices
tensor's version changes when vLLM writes the next step's) and each slice is one shrink
and one expand per adapter present: the same arithmetic (shrink in float32, expand in
the output's dtype), ~2/3 less LoRA overhead on SmolLM2 at batch 32.

vLLM loads `vllm.general_plugins` entry points in every engine and worker process;
pyproject.toml registers `register` there. Set FLYWHEEL_CPU_LORA_KERNELS=0 to keep
vLLM's own ops. Nothing changes on GPU platforms.
"""

from __future__ import annotations

import os

import torch

# (storage address, version) of a stacked weight tensor -> (the tensor, {slot: holds any
# non-zero}). vLLM writes adapters into these tensors in place, which bumps `_version`, so a
# cached answer is never stale. Every address-keyed cache here holds the tensor it describes:
# freed, its address could go to a new tensor at the same version, which would hit the stale
# entry (it did, between tests). Most adapters touch a few modules (say q and v): for the
# others the slot stays all-zero and its GEMMs can be skipped.
_SLOT_IS_LIVE: dict[tuple[int, int], tuple[torch.Tensor, dict[int, bool]]] = {}


def _live(weights: torch.Tensor, slot: int) -> bool:
    key = (weights.data_ptr(), weights._version)
    slots = _SLOT_IS_LIVE.get(key, (None, None))[1]
    if slots is None:
        if len(_SLOT_IS_LIVE) > 4096:  # old versions of reloaded tensors
            _SLOT_IS_LIVE.clear()
        slots = {}
        _SLOT_IS_LIVE[key] = weights, slots
    if slot not in slots:
        slots[slot] = bool(weights[slot].any())
    return slots[slot]


_groups_cache: list = [None, [], None]  # [(data_ptr, version, length) of the indices, their groups, them]


def _groups(indices: torch.Tensor) -> list[tuple[int, torch.Tensor | None]]:
    """The adapter slots the tokens use (not -1) and each one's rows (None: every row)."""
    key = (indices.data_ptr(), indices._version, indices.shape[0])
    if _groups_cache[0] != key:
        present = torch.unique(indices).tolist()
        groups = [(slot, None if len(present) == 1 else (indices == slot).nonzero().squeeze(1))
                  for slot in present if slot >= 0]
        _groups_cache[:] = [key, groups, indices]
    return _groups_cache[1]


def add_lora_linear(self, y: torch.Tensor, x: torch.Tensor, lora_a_stacked: tuple[torch.Tensor, ...],
                    lora_b_stacked: tuple[torch.Tensor, ...], scale: float, output_slices: tuple[int, ...],
                    **kwargs) -> None:
    """`PunicaWrapperCPU.add_lora_linear`: for each slice, `y[:, slice] += (x @ A.T * scale)
    @ B.T` with each token's own adapter (A and B from its slot; none for -1), in place."""
    groups = _groups(self.token_lora_indices)
    if not groups:
        return
    flat = y.view(-1, y.shape[-1])
    x = x.view(-1, x.shape[-1])
    wide = None  # x in float32, made once for every slice
    offset = 0
    for a, b, size in zip(lora_a_stacked, lora_b_stacked, output_slices, strict=True):
        for slot, rows in groups:
            if (pair := _pair(a, b, slot, flat.dtype)) is None:
                continue
            wide = x.float() if wide is None else wide
            shrunk = (wide if rows is None else wide[rows]) @ pair[0]
            if scale != 1.0:
                shrunk *= scale
            delta = shrunk.to(flat.dtype) @ pair[1]
            if rows is None:
                flat[:, offset:offset + size] += delta
            else:
                flat[rows, offset:offset + size] += delta
        offset += size


# (A's and B's storage address, slot, dtype) -> their versions and (A.T in float32, B.T in
# dtype), or None for a slot that is all zeros in this module. vLLM allocates the stacked
# tensors once and loads an adapter into a slot in place, which bumps their versions: an
# entry is rebuilt then, so there is one per module and slot (float32 copies of A: twice
# vLLM's own bf16 A buffers at most; B is a view when its dtype is already the output's).
_pairs: dict[tuple, tuple[tuple[int, int], tuple[torch.Tensor, torch.Tensor] | None, tuple[torch.Tensor, ...]]] = {}


def _pair(a: torch.Tensor, b: torch.Tensor, slot: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
    key, versions = (a.data_ptr(), b.data_ptr(), slot, dtype), (a._version, b._version)
    cached = _pairs.get(key)
    if cached is None or cached[0] != versions:
        live, held = _live(a, slot) and _live(b, slot), (a, b)
        a, b = (a.squeeze(1) if a.dim() == 4 else a), (b.squeeze(1) if b.dim() == 4 else b)
        cached = _pairs[key] = versions, (a[slot].float().T, b[slot].to(dtype).T) if live else None, held
    return cached[1]


def _lora_matmul(inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                 dtype: torch.dtype) -> torch.Tensor | None:
    """Row t of the result is `inputs[t] @ weights[indices[t]].T`; rows with index -1
    (or whose adapter slot is all zeros) are zero. None when every row is zero."""
    if weights.dim() == 4:
        weights = weights.squeeze(1)
    present = torch.unique(indices).tolist()
    adapters = [i for i in present if i >= 0 and _live(weights, i)]
    if not adapters:
        return None
    x = inputs.to(dtype)
    if len(present) == 1:
        return x @ weights[adapters[0]].to(dtype).T
    out = x.new_zeros((x.shape[0], weights.shape[1]))
    for index in adapters:
        rows = (indices == index).nonzero().squeeze(1)
        out[rows] = x[rows] @ weights[index].to(dtype).T
    return out


def bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling=1.0):
    out = _lora_matmul(inputs, lora_a_weights, lora_indices_tensor, output_tensor.dtype)
    rank = lora_a_weights.shape[-2]
    if out is None:
        output_tensor[:, :rank] = 0
    else:
        output_tensor[:, :rank] = scaling * out


def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs=True):
    out = _lora_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    common = min(lora_b_weights.shape[-2], output_tensor.shape[1])
    limit = 1 if inputs.shape[0] == 1 and output_tensor.shape[0] != 1 else output_tensor.shape[0]
    if out is None:
        if not add_inputs:
            output_tensor[:, :common] = 0
    elif add_inputs:
        output_tensor[:, :common] += out[:limit, :common]
    else:
        output_tensor[:, :common] = out[:limit, :common]


def bgmv_expand_slice(inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset, slice_size,
                      add_inputs=True):
    out = _lora_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    target = output_tensor[:, slice_offset:slice_offset + slice_size]
    if out is None:
        if not add_inputs:
            target.zero_()
    elif add_inputs:
        target += out
    else:
        target.copy_(out)


def register() -> None:
    """vLLM general-plugin entry point: swap the CPU punica ops for the grouped ones."""
    if os.environ.get("FLYWHEEL_CPU_LORA_KERNELS", "1") == "0":
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    # sgmv_* (prefill) call lora_ops' bgmv_* by name; punica_cpu bound bgmv_* at import.
    for module in (lora_ops, punica_cpu):
        module.bgmv_shrink = bgmv_shrink
        module.bgmv_expand = bgmv_expand
        module.bgmv_expand_slice = bgmv_expand_slice
    punica_cpu.PunicaWrapperCPU.add_lora_linear = add_lora_linear
