"""LoRA projections that share an input, computed as one matrix product (training speed).

peft runs every LoRA linear as its own three matrix products and an add, and Llama's attention
and MLP call q, k, v (and gate, up) one after another on the same input. `fuse_lora_projections`
makes each such group one product over the stacked frozen weights and LoRA A matrices,
`x @ [W_q; W_k; W_v; A_q; A_k; A_v]^T`, plus one rank-R update for the B side, with a backward
written for a frozen base: x's gradient is one product over the stacked weights plus one rank-R
update, and only the LoRA weights get gradients. The input is read once instead of six times and
the three partial input gradients are never materialized.

The LoRA parameters stay where peft keeps them, so the optimizer, checkpoints and the saved
adapter are exactly as without fusion. Fusion applies to Hugging Face's Llama attention and MLP
(SmolLM2 and Llama 3 use them) with plain LoRA (no dropout, DoRA or bias); any other module runs
as peft runs it.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

GROUPS = {"attention": ("q_proj", "k_proj", "v_proj"), "mlp": ("gate_proj", "up_proj")}


class _StackedLoRA(torch.autograd.Function):
    """`x @ weight^T + (x @ a^T) @ b^T` for a frozen `weight` (out x in), `a` (R x in), `b` (out x R),
    all in one dtype: forward is one product over `[weight; a]` and an in-place rank-R update."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        out_features = weight.shape[0]
        stacked = flat @ torch.cat([weight, a]).t()
        xa = stacked[:, out_features:].contiguous()
        out = stacked[:, :out_features]
        out.addmm_(xa, b.t())
        ctx.save_for_backward(flat, xa, weight, a, b)
        ctx.input_shape = x.shape
        return out.view(*x.shape[:-1], out_features)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        flat, xa, weight, a, b = ctx.saved_tensors
        grad = grad.reshape(-1, grad.shape[-1])
        grad_xa = grad @ b
        grad_x = grad @ weight
        grad_x.addmm_(grad_xa, a)
        return grad_x.view(ctx.input_shape), None, grad_xa.t() @ flat, grad.t() @ xa


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """What autocast would run a linear layer in here: its dtype when on, else the input's."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


class _Group:
    """The peft LoRA layers of one group, their frozen weights stacked once (the layers' own
    weights become views of the stack, so it costs no memory)."""

    def __init__(self, layers: list[Any], adapter: str):
        self.layers, self.adapter = layers, adapter
        self.sizes = [layer.base_layer.weight.shape[0] for layer in layers]
        self.weight = torch.cat([layer.base_layer.weight.detach() for layer in layers])
        start = 0
        for layer, size in zip(layers, self.sizes):
            layer.base_layer.weight = torch.nn.Parameter(self.weight[start:start + size], requires_grad=False)
            start += size

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        dtype = _compute_dtype(x)
        a = torch.cat([layer.lora_A[self.adapter].weight for layer in self.layers])
        b = torch.block_diag(*(layer.lora_B[self.adapter].weight * layer.scaling[self.adapter]
                               for layer in self.layers))
        out = _StackedLoRA.apply(x.to(dtype), self.weight.to(dtype), a.to(dtype), b.to(dtype))
        return out.split(self.sizes, dim=-1)


def _plain_lora(layer: Any) -> str | None:
    """The adapter name when `layer` is a peft LoRA linear this module can fuse, else None."""
    from peft.tuners.lora import Linear

    if not isinstance(layer, Linear) or layer.merged or layer.disable_adapters or len(layer.active_adapters) != 1:
        return None
    name = layer.active_adapters[0]
    fusable = (name in layer.lora_A and not layer.use_dora.get(name) and layer.base_layer.bias is None
               and isinstance(layer.lora_dropout[name], torch.nn.Identity) and not layer.base_layer.weight.requires_grad
               and not getattr(layer, "lora_bias", {}).get(name))
    return name if fusable else None


def fuse_lora_projections(model: torch.nn.Module) -> int:
    """Fuse every Llama attention's q/k/v and MLP's gate/up LoRA layers in `model` (in place;
    call it once the model is on its device and before `torch.compile`). Returns how many
    groups it fused; 0 when the model has none it can fuse."""
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP

    fused = 0
    for module in list(model.modules()):
        kind = "attention" if type(module) is LlamaAttention else "mlp" if type(module) is LlamaMLP else None
        if kind is None or hasattr(module, "_lora_group"):
            continue
        layers = [getattr(module, name) for name in GROUPS[kind]]
        adapters = {_plain_lora(layer) for layer in layers}
        if None in adapters or len(adapters) != 1:
            continue
        module._lora_group = _Group(layers, adapters.pop())
        module.forward = (_attention_forward if kind == "attention" else _mlp_forward).__get__(module)
        fused += 1
    return fused


def _mlp_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """LlamaMLP.forward with gate and up as one product."""
    gate, up = self._lora_group(x)
    return self.down_proj(self.act_fn(gate) * up)


def _attention_forward(self: Any, hidden_states: torch.Tensor, position_embeddings: Any = None,
                       attention_mask: torch.Tensor | None = None, past_key_values: Any = None, **kwargs: Any):
    """LlamaAttention.forward (transformers 5) with q, k and v as one product; the rest is its own
    code, through its module's rotary embedding and attention registry."""
    llama = sys.modules[type(self).__module__]
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.head_dim)
    query, key, value = (part.view(hidden_shape).transpose(1, 2) for part in self._lora_group(hidden_states))
    cos, sin = position_embeddings
    query, key = llama.apply_rotary_pos_emb(query, key, cos, sin)
    if past_key_values is not None:
        key, value = past_key_values.update(key, value, self.layer_idx)
    attention = llama.ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation,
                                                            llama.eager_attention_forward)
    output, weights = attention(self, query, key, value, attention_mask,
                                dropout=0.0 if not self.training else self.attention_dropout, scaling=self.scaling,
                                **kwargs)
    return self.o_proj(output.reshape(*input_shape, -1).contiguous()), weights
