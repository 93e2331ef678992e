"""LoRA training throughput and MFU on one GPU (S4's GPU benchmark).

A 1B-class Llama (hidden 2048, 16 layers, 32 heads, 8 kv heads, ffn 8192, vocab 128256;
random init, bf16 weights), LoRA r=16 on every linear layer (peft), AdamW, the same
step as `flywheel/sft.py` (loss on every token here: synthetic data), batch 16 x 2048
tokens. Reports tokens/s and MFU = 4 * N * tokens/s / peak (a frozen base costs ~4N FLOPs
per trained token: forward 2N, activation gradients 2N; ENVIRONMENT.md) for each variant.

A variant is `eager` or a `+`-joined set of these (e.g. `compiled+cudnn+flce`):

- `compiled`: `torch.compile` of the whole model and loss;
- `dynamic`: compiled with dynamic shapes, as `flywheel/sft.py` compiles (`train.compile`): its
  batches differ in width, and one graph serves them all;
- `liger`: all of Liger's Triton kernels (RMSNorm, SwiGLU, RoPE and a fused linear cross-entropy
  that never materializes the 32k x 128k logits);
- `flce`: Liger's fused linear cross-entropy alone, so the model body stays one compiled graph;
- `cudnn`: cuDNN's attention (SDPA) instead of FlashAttention-2, the only backend allowed;
- `nocast`: peft does not cast each LoRA input to its float32 weights' dtype (autocast casts it
  straight back to bf16 for the matmul, so the arithmetic is the same, minus two copies);
- `autotune`: compiled with Inductor's `max-autotune-no-cudagraphs` mode: every matmul shape is
  timed against Triton templates and the fastest kernel kept (a longer compile);
- `cudagraphs`: compiled with CUDA graphs (`reduce-overhead`; `max-autotune` with `autotune`), so
  the step's kernels launch as one graph replay, not one by one from Python;
- `coordesc`: Inductor's coordinate-descent tuning of its generated (pointwise, norm, reduction)
  kernels' block sizes, with `compiled` or `autotune`;
- `causal`: attention through `flywheel/causal_attention.py` (SDPA with `is_causal`, no mask), as
  `flywheel/sft.py` trains: compiled, transformers otherwise attends through a materialized mask.

`--profile` adds each variant's GPU time per step by kernel class (matrix products, attention,
Inductor's Triton kernels, the rest) and its 12 costliest kernels, from `torch.profiler`.

Each variant runs in its own process (no kernel patch, compile cache or allocator state
leaks between them); one that runs out of memory is retried with half the micro-batch
(gradient accumulation keeps the batch at 16 x 2048), one that fails is reported, not fatal.
Needs only torch, transformers, peft and this checkout's `flywheel` package (whose
`causal_attention` imports nothing else; no Ray), so it runs on a bare GPU machine; Liger
(the `liger` and `flce` variants only) travels as a wheel:

    pip download --no-deps -d .whl liger-kernel==0.8.5          # here, once (.whl is ignored)
    pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
    python bench/train_gpu.py [--steps 20] [--batch 16] [--seq 2048] [--variants eager,compiled] [--out FILE]
                              [--variant-timeout 240] [--profile]
    python bench/train_gpu.py --tiny     # a 2-layer model on CPU: checks the script, measures nothing
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `flywheel` (the causal feature), not installed there

PEAK_FLOPS = 790e12  # H100/H200 bf16 dense matmul, measured (ENVIRONMENT.md)
LLAMA_1B = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
            "num_key_value_heads": 8, "vocab_size": 128256}  # Llama-3.2-1B's shapes (tied embeddings)
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 1024}
FEATURES = ("compiled", "dynamic", "liger", "flce", "cudnn", "nocast", "autotune", "cudagraphs", "coordesc",
            "causal")
COMPILE_MODES = {frozenset(): None, frozenset({"autotune"}): "max-autotune-no-cudagraphs",
                 frozenset({"cudagraphs"}): "reduce-overhead", frozenset({"autotune", "cudagraphs"}): "max-autotune"}
# the reference (transformers' masked attention), the step that meets S4's target, what sft.py runs
# and the next lever; a compiled variant took 80-130 s on an H200 (2026-11-28), so four fit one
# 10-minute device call
DEFAULT_VARIANTS = "compiled,compiled+causal,dynamic+causal,compiled+causal+autotune"


def features(variant: str) -> set[str]:
    """`eager` -> none; `compiled+flce` -> {compiled, flce}; an unknown name is a SystemExit."""
    named = set() if variant == "eager" else set(variant.split("+"))
    unknown = sorted(named - set(FEATURES))
    if unknown:
        raise SystemExit(f"unknown feature(s) {', '.join(unknown)} in variant {variant!r}; "
                         f"a variant is 'eager' or a '+'-joined set of {', '.join(FEATURES)}")
    return named


def build(tiny: bool, device: str, chosen: set[str]):
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer
    from transformers import LlamaConfig, LlamaForCausalLM

    if chosen & {"liger", "flce"}:  # patches transformers' Llama classes, so before the model is built
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        alone = "liger" not in chosen
        apply_liger_kernel_to_llama(rope=not alone, rms_norm=not alone, swiglu=not alone, cross_entropy=False,
                                    fused_linear_cross_entropy=True)
    if "cudnn" in chosen:
        torch.backends.cuda.enable_flash_sdp(False)
        torch.backends.cuda.enable_mem_efficient_sdp(False)
        torch.backends.cuda.enable_math_sdp(False)
        torch.backends.cuda.enable_cudnn_sdp(True)
    shape = TINY if tiny else LLAMA_1B
    torch.manual_seed(0)
    config = LlamaConfig(**shape, max_position_embeddings=8192, tie_word_embeddings=True)
    with torch.device(device):  # random init on the GPU: seconds, not the CPU's minute
        model = LlamaForCausalLM(config).to(dtype=torch.bfloat16)
    base_parameters = sum(p.numel() for p in model.parameters())
    if "causal" in chosen:
        from flywheel.causal_attention import use_causal_attention

        use_causal_attention(model)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    if "nocast" in chosen:
        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                module.cast_input_dtype_enabled = False
    return model, base_parameters, config.vocab_size


def measure(variant: str, tiny: bool, batch: int, micro: int, seq: int, steps: int, device: str,
            profile: bool = False) -> dict:
    """Tokens/s of `steps` optimizer steps of `batch` sequences, `micro` at a time, after 3 warm-up steps."""
    import torch

    chosen = features(variant)
    model, parameters, vocab = build(tiny, device, chosen)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    step_fn = model
    if "coordesc" in chosen:
        import torch._inductor.config

        torch._inductor.config.coordinate_descent_tuning = True
    if chosen & {"compiled", "dynamic", "autotune", "cudagraphs", "coordesc"}:  # dynamic=None: fixed while shapes stay the same
        step_fn = torch.compile(model, dynamic=True if "dynamic" in chosen else None,
                                mode=COMPILE_MODES[frozenset(chosen & {"autotune", "cudagraphs"})])
    chunks = [torch.randint(0, vocab, (micro, seq), device=device) for _ in range(batch // micro)]

    def step() -> None:
        for tokens in chunks:
            with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16):
                loss = step_fn(input_ids=tokens, labels=tokens).loss / len(chunks)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up (and compilation)
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    tokens_per_s = len(chunks) * micro * seq * steps / (time.perf_counter() - started)
    row = {"tokens_per_s": tokens_per_s, "mfu": 4 * parameters * tokens_per_s / PEAK_FLOPS, "parameters": parameters,
           "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}
    if profile:
        row["profile"] = kernel_profile(step, device)
    return row


KERNEL_CLASSES = (("matmul", re.compile(r"gemm|nvjet|cutlass|xmma|cublas|splitk|mm_", re.IGNORECASE)),
                  ("attention", re.compile(r"flash|fmha|attention|sdpa", re.IGNORECASE)),
                  ("triton", re.compile(r"^triton_", re.IGNORECASE)))


def kernel_profile(step, device: str, steps: int = 2) -> dict:
    """Milliseconds per step by kernel class and the costliest kernels: GPU kernels on CUDA,
    operators' CPU time in a --tiny run (which checks the code, not the numbers)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = device == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as recorded:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    wanted = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    kernels: dict[str, float] = {}
    for event in recorded.events():
        if event.device_type == wanted:
            kernels[event.name] = kernels.get(event.name, 0.0) + (event.device_time if cuda else event.cpu_time) / 1e3
    classes = dict.fromkeys([label for label, _ in KERNEL_CLASSES] + ["other"], 0.0)
    for name, ms in kernels.items():
        classes[next((label for label, pattern in KERNEL_CLASSES if pattern.search(name)), "other")] += ms
    top = sorted(kernels.items(), key=lambda item: -item[1])[:12]
    return {"ms_per_step": {label: round(ms / steps, 2) for label, ms in classes.items()},
            "total_ms_per_step": round(sum(kernels.values()) / steps, 2),
            "top_kernels_ms_per_step": [[name[:120], round(ms / steps, 2)] for name, ms in top]}


def child(args: argparse.Namespace) -> None:
    """One variant at one micro-batch; prints one JSON line, an error row included."""
    import torch

    device = "cpu" if args.tiny else "cuda"
    row = {"variant": args.only, "micro_batch": args.micro_batch}
    try:
        row.update(measure(args.only, args.tiny, args.batch, args.micro_batch, args.seq, args.steps, device,
                           args.profile))
    except torch.cuda.OutOfMemoryError as error:
        row.update(error=f"out of memory: {str(error).splitlines()[0]}", oom=True)
    except Exception as error:  # a variant that cannot run is a result to report, not a crash
        row.update(error=f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300])
    print(json.dumps(row))


def run_variant(args: argparse.Namespace, variant: str, batch: int, seq: int, steps: int) -> dict:
    micro = batch
    while True:
        command = [sys.executable, __file__, "--only", variant, "--micro-batch", str(micro), "--batch", str(batch),
                   "--seq", str(seq), "--steps", str(steps)] + (["--tiny"] if args.tiny else []) + (
                   ["--profile"] if args.profile else [])
        try:
            done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=args.variant_timeout)
        except subprocess.TimeoutExpired:
            return {"variant": variant, "micro_batch": micro, "error": f"timed out after {args.variant_timeout} s"}
        lines = done.stdout.strip().splitlines()
        row = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {
            "variant": variant, "micro_batch": micro, "error": f"exit {done.returncode}: {done.stderr.strip()[-300:]}"}
        if not row.get("oom") or micro == 1:
            return row
        micro //= 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--variants", default=None, help=f"comma-separated (default: {DEFAULT_VARIANTS}; eager "
                                                         "with --tiny)")
    parser.add_argument("--out", default=None, help="also write the JSON report here")
    parser.add_argument("--variant-timeout", type=int, default=240, help="seconds for one variant's process, "
                        "compilation included: a hung compile is a failed row, not the whole budget")
    parser.add_argument("--tiny", action="store_true", help="2 layers on CPU: a smoke run of this script")
    parser.add_argument("--profile", action="store_true", help="also time each variant's kernels by class "
                        "(2 more steps under torch.profiler)")
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--micro-batch", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        child(args)
        return

    import torch

    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --tiny to check the script on CPU")
    variants = (args.variants or ("eager" if args.tiny else DEFAULT_VARIANTS)).split(",")
    for variant in variants:
        features(variant)
    batch, seq, steps = (2, 64, 2) if args.tiny else (args.batch, args.seq, args.steps)
    name = "cpu (smoke run)" if args.tiny else torch.cuda.get_device_name()
    rows: dict[str, dict] = {}
    report = {"benchmark": "train_gpu", "device": name, "versions": versions(), "parameters": None, "batch": batch,
              "seq": seq, "steps": steps, "peak_flops": PEAK_FLOPS, "results": rows}
    for variant in variants:
        row = rows[variant] = run_variant(args, variant, batch, seq, steps)
        outcome = row.get("error") or (f"{row['tokens_per_s']:,.0f} tokens/s, MFU {row['mfu']:.1%} at micro-batch "
                                       f"{row['micro_batch']}")
        print(f"  {variant}: {outcome}", file=sys.stderr, flush=True)
        if report["parameters"] is None:  # the same model in every variant: the first that ran counts it
            report["parameters"] = row.get("parameters")
        if args.out:  # after every variant: a run stopped at its time limit keeps what it measured
            with open(args.out, "w") as handle:
                json.dump(report, handle, indent=2)
    print(f"{'variant':<28} {'micro':>5} {'tokens/s':>10} {'MFU':>7} {'peak GiB':>9}   ({name}; batch {batch} x {seq})")
    for variant, row in rows.items():
        if "error" in row:
            print(f"{variant:<28} {row['micro_batch']:>5} {'failed: ' + row['error']}")
            continue
        memory = f"{row['peak_memory_gib']:.1f}" if row["peak_memory_gib"] is not None else "-"
        print(f"{variant:<28} {row['micro_batch']:>5} {row['tokens_per_s']:>10,.0f} {row['mfu']:>7.1%} {memory:>9}")
    print(json.dumps(report))


def versions() -> dict:
    """The packages the numbers depend on, as installed where they were measured."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("torch", "transformers", "peft", "triton", "liger-kernel"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found

if __name__ == "__main__":
    main()
