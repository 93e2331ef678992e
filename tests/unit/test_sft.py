"""The SFT loop without Ray, on a tiny random Llama and a tokenizer trained in-test:
label masking (assistant tokens only, tool calls included), collation, batching across
ranks, loss going down, checkpoints and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flywheel.sft import IGNORE, LocalSession, collate, encode, global_batches, lora_model, run_sft, shard
from tests.unit.tiny_llama import TEMPLATE, TOOLS, conversation


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_only_assistant_tokens_carry_labels_including_tool_calls(tokenizer):
    example = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "order O7?"},
                            conversation(7)["messages"][1]], "tools": TOOLS}
    encoded = encode(tokenizer, TEMPLATE, example)
    learned = tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels, strict=True)
                                if label != IGNORE])
    assert learned == 'Hello!<|im_end|><tool_call>\n{"name": "get_order_status", "arguments": {"order_id": "O7"}}' \
                      '\n</tool_call><|im_end|>'
    prompt = tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels, strict=True)
                               if label == IGNORE])
    assert "Be brief." in prompt and "get_order_status" in prompt and "order O7?" in prompt


def test_collation_pads_and_masks(tokenizer):
    from flywheel.sft import Encoded

    batch = collate([Encoded([5, 6, 7], [IGNORE, 6, 7]), Encoded([8], [8])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_global_batches_group_lengths_and_give_every_rank_the_same_steps():
    lengths = [5, 97, 6, 52, 7, 96, 8, 53, 50, 51]
    batches = global_batches(lengths, batch_size=2, world_size=2, seed=1, epoch=0)
    assert batches == global_batches(lengths, batch_size=2, world_size=2, seed=1, epoch=0)
    assert batches != global_batches(lengths, batch_size=2, world_size=2, seed=1, epoch=1)
    assert sorted(i for batch in batches for i in batch) == list(range(10))
    assert all(max(lengths[i] for i in b) - min(lengths[i] for i in b) <= 10 for b in batches)
    mine = {i for b in batches for i in shard(b, 0, 2)}
    theirs = {i for b in batches for i in shard(b, 1, 2)}
    assert len(mine) == len(theirs) == 5 and not mine & theirs


def _loop_config(model: Path, dataset: Path, out: Path, **overrides) -> dict:
    from flywheel.config import TrainConfig

    return {**TrainConfig().model_dump(), "model_path": str(model), "dataset_path": str(dataset),
            "output_dir": str(out / "adapter"), "progress_file": str(out / "progress.jsonl"), "chat_template": TEMPLATE,
            "target_modules": "all-linear", "learning_rate": 2e-2, "warmup_ratio": 0.0, "batch_size": 4, "precision": "fp32",
            **overrides}


def test_loss_goes_down_and_the_adapter_is_a_peft_folder(tiny_model, sft_dataset, tmp_path):
    session = LocalSession(tmp_path / "checkpoints")
    metrics = run_sft(_loop_config(tiny_model, sft_dataset, tmp_path, epochs=6, checkpoint_every=4), session)
    steps = [json.loads(line) for line in (tmp_path / "progress.jsonl").read_text().splitlines()]
    assert len(steps) == metrics["step"] == 48  # 32 examples / 4 per batch x 6 epochs
    assert sum(s["loss"] for s in steps[-8:]) / 8 < 0.6 * sum(s["loss"] for s in steps[:8]) / 8
    assert metrics["val_loss"] is not None and metrics["tokens_per_s"] > 0
    assert {p.name for p in (tmp_path / "adapter").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == 16


def test_a_run_resumes_from_its_last_checkpoint(tiny_model, sft_dataset, tmp_path):
    first = LocalSession(tmp_path / "checkpoints")
    run_sft(_loop_config(tiny_model, sft_dataset, tmp_path, max_steps=6, checkpoint_every=3, epochs=3), first)
    assert first.latest_checkpoint().name == "step-000006"
    resumed = run_sft(_loop_config(tiny_model, sft_dataset, tmp_path, max_steps=10, checkpoint_every=3, epochs=3),
                      LocalSession(tmp_path / "checkpoints"))
    assert resumed["resumed_from"] == 6 and resumed["step"] == 10
    steps = [json.loads(line)["step"] for line in (tmp_path / "progress.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]  # nothing trained twice


def test_a_stop_file_ends_training_after_the_current_step_and_keeps_the_adapter(tiny_model, sft_dataset, tmp_path):
    stop = tmp_path / "STOP"

    class StopAtFirstCheckpoint(LocalSession):  # what a cancel does, mid-run
        def report(self, metrics, checkpoint):
            super().report(metrics, checkpoint)
            stop.touch()

    metrics = run_sft(_loop_config(tiny_model, sft_dataset, tmp_path, max_steps=20, checkpoint_every=3, epochs=6,
                                   stop_file=str(stop)), StopAtFirstCheckpoint(tmp_path / "checkpoints"))
    assert metrics["step"] == 4 and metrics["stopped"] == "requested"  # step 3 checkpointed, step 4 saw the file
    assert metrics["val_loss"] is None  # a stop means now: no validation pass
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_a_warm_start_begins_where_an_earlier_adapter_ended(tiny_model, sft_dataset, tmp_path):
    first, warm, fresh = tmp_path / "first", tmp_path / "warm", tmp_path / "fresh"
    for folder in (first, warm, fresh):
        folder.mkdir()
    run_sft(_loop_config(tiny_model, sft_dataset, first, epochs=6), LocalSession(first / "checkpoints"))
    learned = [json.loads(line)["loss"] for line in (first / "progress.jsonl").read_text().splitlines()]

    def first_steps(folder, **extra):
        run_sft(_loop_config(tiny_model, sft_dataset, folder, max_steps=4, **extra), LocalSession(folder / "checkpoints"))
        steps = [json.loads(line) for line in (folder / "progress.jsonl").read_text().splitlines()]
        return [step["loss"] for step in steps], steps[0]["learning_rate"]

    (warm, warm_lr), (fresh, fresh_lr) = first_steps(warm, init_adapter_path=str(first / "adapter")), first_steps(fresh)
    assert warm_lr == pytest.approx(0.25 * fresh_lr)  # train.warm_start_lr_scale: nudged, not relearned
    assert sum(warm) / 4 < 0.6 * sum(fresh) / 4  # it starts trained, not from scratch
    assert abs(sum(warm) / 4 - sum(learned[-8:]) / 8) < 0.5 * sum(fresh) / 4


def test_a_compiled_loop_learns_what_the_eager_one_does(tiny_model, tokenizer, sft_dataset, tmp_path, monkeypatch):
    """`train.compile: on` (CPU here; `auto` turns it on for CUDA). The batches differ in
    width, and the graph takes dynamic shapes: one graph for training and one for the
    no-grad validation pass, not one per width. Compiled, it attends causally with no mask
    (`causal_attention`), eager through transformers' masked SDPA: on right-padded batches the
    two agree. Inductor may reorder float sums, so the losses and weights agree to a tolerance,
    not bitwise."""
    from safetensors.torch import load_file
    from torch._dynamo.utils import counters

    from flywheel import sft
    from flywheel.causal_attention import NAME

    built, original = [], sft.lora_model
    monkeypatch.setattr(sft, "lora_model", lambda cfg, dtype: built.append(original(cfg, dtype)) or built[-1])

    examples = [json.loads(line) for line in (sft_dataset / "train.jsonl").read_text().splitlines()]
    lengths = [len(encode(tokenizer, TEMPLATE, example).input_ids) for example in examples]
    widths = {max(lengths[i] for i in batch) for batch in global_batches(lengths, 4, 1, 0, 0)[:6]}
    assert len(widths) >= 2  # what makes dynamic shapes matter
    runs = {}
    for mode in ("off", "on"):
        folder = tmp_path / mode
        folder.mkdir()
        counters.clear()
        metrics = run_sft(_loop_config(tiny_model, sft_dataset, folder, max_steps=6, compile=mode),
                          LocalSession(folder / "checkpoints"))
        steps = [json.loads(line) for line in (folder / "progress.jsonl").read_text().splitlines()]
        runs[mode] = (metrics, [step["loss"] for step in steps], counters["stats"]["unique_graphs"],
                      load_file(folder / "adapter" / "adapter_model.safetensors"))
    (eager, eager_losses, eager_graphs, eager_weights) = runs["off"]
    (compiled, compiled_losses, compiled_graphs, compiled_weights) = runs["on"]
    assert (eager_graphs, compiled_graphs) == (0, 2)
    assert [model.config._attn_implementation for model in built] == ["sdpa", NAME]
    assert compiled["step"] == eager["step"] == 6
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-3)
    assert compiled["val_loss"] == pytest.approx(eager["val_loss"], rel=1e-3)
    assert compiled_weights.keys() == eager_weights.keys()
    assert max((compiled_weights[name] - eager_weights[name]).abs().max().item() for name in eager_weights) < 1e-3


def test_over_a_bfloat16_base_the_lora_weights_and_their_gradients_stay_float32(tiny_model, tmp_path):
    """On CUDA the frozen base loads in bfloat16 (`_device_and_precision`); the optimizer must
    still get float32 LoRA weights and gradients, or small updates round away."""
    import torch

    model = lora_model(_loop_config(tiny_model, tmp_path, tmp_path), torch.bfloat16)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}
    tokens = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=tokens, labels=tokens).loss.backward()
    gradients = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 for g in gradients)
    assert any(g.abs().sum() > 0 for g in gradients)


def test_the_gpu_tiers_spelled_out_settings_are_all_the_loop_reads(tiny_model, sft_dataset, tmp_path):
    """test_sft_cuda.py lists TrainConfig's fields by hand (a GPU machine has no pydantic), and
    only runs where there is CUDA: one CPU step here, given only those, keeps it from rotting."""
    from tests.unit.test_sft_cuda import SETTINGS

    metrics = run_sft({**SETTINGS, "precision": "fp32", "compile": "off", "max_steps": 1, "model_path": str(tiny_model),
                       "dataset_path": str(sft_dataset), "output_dir": str(tmp_path / "adapter"), "progress_file": None,
                       "chat_template": TEMPLATE}, LocalSession(tmp_path / "checkpoints"))
    assert metrics["step"] == 1


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_on_a_cpu_is_bf16_only_where_onednn_has_bf16_kernels(monkeypatch, native):
    """An AVX2-only CPU runs bf16 through reference code (30x slower than float32 there): `auto`
    must not pick it."""
    import torch

    from flywheel import hardware, sft

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "cpu_has_bf16_kernels", lambda: native)
    device, autocast, weights = sft._device_and_precision("auto")
    assert device.type == "cpu" and weights == torch.float32 and (autocast is not None) == native
    assert sft._device_and_precision("bf16")[1] is not None and sft._device_and_precision("fp32")[1] is None
