"""`run_sft` on CUDA (gpu tier: skipped without one). It imports no Ray, Serve or pydantic, so
it runs on a bare GPU machine: `pytest tests/unit/test_sft_cuda.py -m gpu`. What
`train.precision: auto` and `train.compile: auto` choose there (a bf16 base, a compiled step
with dynamic shapes, attending causally with no mask) learns the tiny task, and the adapter it
saves is float32. It passed on an H200 on 2026-11-28 (88 s), when sft switched attention on loading
the base rather than in `_compiled`."""

from __future__ import annotations

import json

import pytest

from flywheel import causal_attention, sft
from tests.unit.tiny_llama import TEMPLATE

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
              # a compile that never ends prints every thread's stack (device time is scarce), not a silent kill
              pytest.mark.timeout(240, method="thread")]

# TrainConfig's fields as test_sft sets them, spelled out: pydantic is not on the GPU machine
SETTINGS = {"seed": 0, "max_seq_len": 1024, "precision": "auto", "compile": "auto", "cpus_per_worker": 1,
            "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear",
            "learning_rate": 2e-2, "weight_decay": 0.0, "warmup_ratio": 0.0, "epochs": 6, "max_steps": None,
            "batch_size": 4, "grad_accum": 1, "max_grad_norm": 1.0, "early_stopping_patience": None,
            "checkpoint_every": 1000}


def test_on_cuda_the_loop_compiles_over_a_bf16_base_learns_and_saves_a_float32_adapter(tiny_model, sft_dataset,
                                                                                        tmp_path, monkeypatch):
    from safetensors.torch import load_file
    from torch._dynamo.utils import counters

    loaded, original = [], sft.lora_model

    def recorded(cfg, dtype):
        model = original(cfg, dtype)
        loaded.append((dtype, model))
        return model

    monkeypatch.setattr(sft, "lora_model", recorded)
    counters.clear()
    metrics = sft.run_sft({**SETTINGS, "model_path": str(tiny_model), "dataset_path": str(sft_dataset),
                           "output_dir": str(tmp_path / "adapter"), "progress_file": str(tmp_path / "progress.jsonl"),
                           "chat_template": TEMPLATE}, sft.LocalSession(tmp_path / "checkpoints"))

    assert [dtype for dtype, _ in loaded] == [torch.bfloat16] and counters["stats"]["unique_graphs"] >= 1
    assert loaded[0][1].config._attn_implementation == causal_attention.NAME  # compiled: no mask
    losses = [json.loads(line)["loss"] for line in (tmp_path / "progress.jsonl").read_text().splitlines()]
    assert metrics["step"] == len(losses) == 48  # 32 examples / 4 per batch x 6 epochs
    assert sum(losses[-8:]) / 8 < 0.6 * sum(losses[:8]) / 8
    assert metrics["val_loss"] is not None
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert weights and {tensor.dtype for tensor in weights.values()} == {torch.float32}
