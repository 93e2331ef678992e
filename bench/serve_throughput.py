"""Serving throughput: the HTTP path (Ray Serve ingress -> vLLM replica) vs offline vLLM.

One run, side by side on the same machine:
  1. `flywheel serve`'s app in-process; 1, 8 and 32 concurrent clients send fixed prompts
     (max_tokens 64, ignore_eos so every answer is 64 tokens) to the base model and to a
     LoRA adapter, non-streaming (latency) and streaming (TTFT), the top level best of 2;
  2. the service is torn down and vLLM's offline `LLM.chat` generates the same prompts
     with the same engine settings (LoRA enabled, max_num_seqs = the top concurrency),
     best of 2.
Prints a table and, last, one JSON line. Targets (ISSUE S1): HTTP >= 85% of offline at
32 concurrent; adapter >= 80% of base.

    python bench/serve_throughput.py [--levels 1,8,32] [--max-tokens 64] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flywheel.config import load_config
from flywheel.service import free_port

REPEATS = 2  # at the top concurrency and offline: best of 2

PROMPTS = [
    "Where is my order {n}? It was supposed to arrive yesterday.",
    "I want to return the shoes from order {n}, they are too small.",
    "Can you change the delivery address for order {n} to 12 Elm Street?",
    "My refund for order {n} has not arrived. What should I do?",
    "Does the blue backpack from order {n} have a laptop sleeve?",
    "I was charged twice for order {n}, please help.",
    "How long does shipping usually take for order {n}?",
    "Please cancel order {n} before it ships.",
]


def prompts(count: int) -> list[list[dict]]:
    return [[{"role": "system", "content": "You are a helpful customer-support agent."},
             {"role": "user", "content": PROMPTS[i % len(PROMPTS)].format(n=4000 + i)}] for i in range(count)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def one_request(client, url: str, model: str, messages: list[dict], max_tokens: int, stream: bool,
                headers: dict | None = None) -> dict:
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True}
    started = time.perf_counter()
    if not stream:
        response = client.post(f"{url}/v1/chat/completions", json=body, headers=headers)
        response.raise_for_status()
        return {"latency": time.perf_counter() - started, "ttft": None,
                "tokens": response.json()["usage"]["completion_tokens"]}
    body.update(stream=True, stream_options={"include_usage": True})
    ttft, tokens = None, 0
    with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if ttft is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                ttft = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return {"latency": time.perf_counter() - started, "ttft": ttft, "tokens": tokens}


def load_level(url: str, model: str, concurrency: int, requests: int, max_tokens: int, stream: bool,
               repeats: int = 1, headers: dict | None = None) -> dict:
    """Throughput and latency at `concurrency` clients; the best of `repeats` runs (the
    machine is shared and noisy; best-of-N is applied alike to the offline side)."""
    runs = [_load_once(url, model, concurrency, requests, max_tokens, stream, headers) for _ in range(repeats)]
    return max(runs, key=lambda run: run["tok_s"])


def _load_once(url: str, model: str, concurrency: int, requests: int, max_tokens: int, stream: bool,
               headers: dict | None = None) -> dict:
    import httpx

    batch = prompts(requests)
    with httpx.Client(timeout=600, limits=httpx.Limits(max_connections=concurrency + 4)) as client:
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(lambda m: one_request(client, url, model, m, max_tokens, stream, headers), batch))
        wall = time.perf_counter() - started
    latencies = [r["latency"] for r in results]
    ttfts = [r["ttft"] for r in results if r["ttft"] is not None]
    return {
        "tok_s": sum(r["tokens"] for r in results) / wall,
        "p50_s": statistics.median(latencies),
        "p99_s": percentile(latencies, 0.99),
        "ttft_p50_s": statistics.median(ttfts) if ttfts else None,
        "ttft_p99_s": percentile(ttfts, 0.99) if ttfts else None,
        "requests": requests,
    }


def random_adapter(model_path: Path, out: Path, seed: int = 0) -> None:
    """A rank-8 LoRA with random (non-zero) weights: same serving cost as a trained one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_path, torch_dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                        task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(out)


def http_phase(cfg, levels: list[int], max_tokens: int) -> tuple[dict, dict]:
    from flywheel.models import resolve_model_path
    from flywheel.service import running_service

    base = cfg.serve.models[0]
    adapter = "bench-random-r8"
    random_adapter(resolve_model_path(base.source, cfg.models_dir), cfg.adapters_dir / base.name / adapter)
    rows, adapter_rows = {}, {}
    with running_service(cfg) as url:
        load_level(url, base.name, 4, 8, 8, stream=False)  # warm-up
        load_level(url, f"{base.name}:{adapter}", 4, 8, 8, stream=False)  # loads the adapter
        for level in levels:
            requests = max(8, 2 * level)
            for stream in (False, True):
                key = f"{level}{'-stream' if stream else ''}"
                rows[key] = load_level(url, base.name, level, requests, max_tokens, stream,
                                       repeats=REPEATS if level == max(levels) else 1)
                print(f"  http c={level:<3} stream={stream!s:<5} {rows[key]['tok_s']:7.1f} tok/s", flush=True)
        top = max(levels)
        for stream in (False, True):
            key = f"{top}{'-stream' if stream else ''}"
            adapter_rows[key] = load_level(url, f"{base.name}:{adapter}", top, max(8, 2 * top), max_tokens,
                                           stream, repeats=REPEATS)
            print(f"  adapter c={top} stream={stream}: {adapter_rows[key]['tok_s']:7.1f} tok/s", flush=True)
    return rows, adapter_rows


def offline_phase(cfg, requests: int, max_batch: int, max_tokens: int) -> float:
    base = cfg.serve.models[0]
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(base.kv_cache_gib)  # as the replica sets them
    os.environ["VLLM_LOGGING_LEVEL"] = base.log_level  # (and no shutdown chatter after the JSON line)

    from vllm import LLM, SamplingParams

    from flywheel.chat_templates import chat_template_path
    from flywheel.models import resolve_model_path

    llm = LLM(model=str(resolve_model_path(base.source, cfg.models_dir)), dtype=base.dtype,
              max_model_len=base.max_model_len, enforce_eager=True, enable_lora=True,
              max_loras=base.max_loras, max_lora_rank=base.max_lora_rank, max_num_seqs=max_batch)
    template = Path(chat_template_path(base.chat_template)).read_text()
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    llm.chat(prompts(8), params, chat_template=template, use_tqdm=False)  # warm-up
    best = 0.0
    for _ in range(REPEATS):
        started = time.perf_counter()
        outputs = llm.chat(prompts(requests), params, chat_template=template, use_tqdm=False)
        wall = time.perf_counter() - started
        best = max(best, sum(len(o.outputs[0].token_ids) for o in outputs) / wall)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "local.yaml"))
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--json-out", default=str(REPO / "bench" / "results" / "serve_throughput.json"))
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    os.environ.setdefault("FLYWHEEL_HOME", tempfile.mkdtemp(prefix="flywheel-bench-"))
    cfg = load_config(args.config, {"serve.port": free_port()})
    print("phase 1: HTTP through Ray Serve", flush=True)
    http, adapter = http_phase(cfg, levels, args.max_tokens)
    print("phase 2: offline vLLM, same prompts", flush=True)
    top = max(levels)
    offline = offline_phase(cfg, max(8, 2 * top), top, args.max_tokens)

    from rich.console import Console
    from rich.table import Table

    table = Table("path", "clients", "tok/s", "p50 s", "p99 s", "TTFT p50 s", "TTFT p99 s")
    for key, row in http.items():
        fmt = lambda v: "-" if v is None else f"{v:.2f}"
        table.add_row("HTTP stream" if key.endswith("stream") else "HTTP", key.split("-")[0],
                      f"{row['tok_s']:.1f}", fmt(row["p50_s"]), fmt(row["p99_s"]),
                      fmt(row["ttft_p50_s"]), fmt(row["ttft_p99_s"]))
    for key, row in adapter.items():
        table.add_row("HTTP adapter" + (" stream" if key.endswith("stream") else ""), key.split("-")[0],
                      f"{row['tok_s']:.1f}", f"{row['p50_s']:.2f}", f"{row['p99_s']:.2f}", "-", "-")
    table.add_row("offline vLLM", f"batch {top}", f"{offline:.1f}", "-", "-", "-", "-")
    Console().print(table)

    summary = {
        "benchmark": "serve_throughput",
        "max_tokens": args.max_tokens,
        "http": http,
        "adapter": adapter,
        "offline_tok_s": offline,
        "http_vs_offline_at_top": http[str(top)]["tok_s"] / offline,
        "http_stream_vs_offline_at_top": http[f"{top}-stream"]["tok_s"] / offline,
        "adapter_vs_base_at_top": adapter[str(top)]["tok_s"] / http[str(top)]["tok_s"],
        "adapter_stream_vs_base_at_top": adapter[f"{top}-stream"]["tok_s"] / http[f"{top}-stream"]["tok_s"],
    }
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
