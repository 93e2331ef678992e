"""LoRA training throughput and MFU on one GPU (S4's GPU benchmark).

A 1B-class Llama (hidden 2048, 16 layers, 32 heads, 8 kv heads, ffn 8192, vocab 128256;
random init, bf16 weights), LoRA r=16 on every linear layer (peft), AdamW, the same
step as `flywheel/sft.py` (loss on every token here: synthetic data), batch 16 x 2048
tokens. Reports tokens/s and MFU = 4 * N * tokens/s / peak (a frozen base costs ~4N FLOPs
per trained token: forward 2N, activation gradients 2N; ENVIRONMENT.md), eager and with
torch.compile, in one run. Needs only torch, transformers and peft (no Ray), so it runs on
a bare GPU machine:

    python bench/train_gpu.py [--steps 20] [--batch 16] [--seq 2048] [--no-compile]
    python bench/train_gpu.py --tiny     # a 2-layer model on CPU: checks the script, measures nothing
"""

from __future__ import annotations

import argparse
import json
import time

PEAK_FLOPS = 790e12  # H100/H200 bf16 dense matmul, measured (ENVIRONMENT.md)
LLAMA_1B = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
            "num_key_value_heads": 8, "vocab_size": 128256}  # Llama-3.2-1B's shapes (tied embeddings)
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 1024}


def build(tiny: bool, device: str):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = TINY if tiny else LLAMA_1B
    torch.manual_seed(0)
    config = LlamaConfig(**shape, max_position_embeddings=8192, tie_word_embeddings=True)
    model = LlamaForCausalLM(config).to(device=device, dtype=torch.bfloat16)
    base_parameters = sum(p.numel() for p in model.parameters())
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    return model, base_parameters, config.vocab_size


def measure(model, vocab: int, batch: int, seq: int, steps: int, device: str, compiled: bool) -> float:
    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    step_fn = torch.compile(model) if compiled else model
    tokens = torch.randint(0, vocab, (batch, seq), device=device)

    def step() -> None:
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16):
            loss = step_fn(input_ids=tokens, labels=tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up (and compilation)
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return batch * seq * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="2 layers on CPU: a smoke run of this script")
    args = parser.parse_args()

    import torch

    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    if device == "cpu" and not args.tiny:
        raise SystemExit("no CUDA device: run with --tiny to check the script on CPU")
    batch, seq, steps = (2, 64, 2) if args.tiny else (args.batch, args.seq, args.steps)
    results = {}
    for compiled in ([False] if args.no_compile or args.tiny else [False, True]):
        model, parameters, vocab = build(args.tiny, device)
        tokens_per_s = measure(model, vocab, batch, seq, steps, device, compiled)
        results["compiled" if compiled else "eager"] = {
            "tokens_per_s": tokens_per_s, "mfu": 4 * parameters * tokens_per_s / PEAK_FLOPS,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke run)"
    print(f"{'mode':<10} {'tokens/s':>10} {'MFU':>7}   ({name}; {parameters / 1e9:.2f}B params; batch {batch} x {seq})")
    for mode, row in results.items():
        print(f"{mode:<10} {row['tokens_per_s']:>10,.0f} {row['mfu']:>7.1%}")
    print(json.dumps({"benchmark": "train_gpu", "device": name, "parameters": parameters, "batch": batch,
                      "seq": seq, "steps": steps, "results": results}))


if __name__ == "__main__":
    main()
