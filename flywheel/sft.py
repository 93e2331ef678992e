"""The per-worker LoRA SFT loop: a plain function, run by Ray Train on every worker or
directly in one process (a bare GPU box with torch/transformers/peft and no Ray).

Examples are rendered with the chat template the service serves with
(`flywheel/templates/chatml_tools.jinja`), so the student learns the exact tool-call format
it will be asked for; the template's `{% generation %}` marks give the assistant-token
mask, and only those tokens carry loss (tool-call turns included). Batches group examples
of similar length (less padding), the same global batches on every worker, each worker
taking its slice, so DDP ranks always step together.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from flywheel import hardware

IGNORE = -100
ADAPTER_WEIGHTS = "adapter_model.safetensors"
STATE = "training_state.pt"


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # IGNORE where the token is not the assistant's


def encode(tokenizer: Any, template: str, example: dict[str, Any]) -> Encoded:
    rendered = tokenizer.apply_chat_template(
        example["messages"], tools=example.get("tools") or None, chat_template=template, tokenize=True,
        return_dict=True, return_assistant_tokens_mask=True)
    ids = list(rendered["input_ids"])
    labels = [token if keep else IGNORE for token, keep in zip(ids, rendered["assistant_masks"], strict=True)]
    return Encoded(ids, labels)


def collate(batch: list[Encoded], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors; padding is masked out of attention and loss (or, compiled, comes
    after every real token under causal attention, which keeps it out of their context)."""
    import torch

    width = max(len(item.input_ids) for item in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, item in enumerate(batch):
        n = len(item.input_ids)
        ids[row, :n] = torch.tensor(item.input_ids)
        labels[row, :n] = torch.tensor(item.labels)
        attention[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": attention}


def global_batches(lengths: list[int], batch_size: int, world_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of `batch_size * world_size` indices of similar length, in a seeded order
    that is the same on every worker; a last batch too small to give every worker an
    example is dropped."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    size = batch_size * world_size
    batches = [order[start:start + size] for start in range(0, len(order), size)]
    batches = [batch for batch in batches if len(batch) >= world_size]
    rng.shuffle(batches)
    return batches


def shard(batch: list[int], rank: int, world_size: int) -> list[int]:
    return batch[rank::world_size]


class Session(Protocol):
    """Where the loop runs: one process, or one Ray Train worker."""

    world_rank: int
    world_size: int

    def prepare_model(self, model: Any) -> Any: ...

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        """Every rank calls it the same number of times; rank 0 passes the checkpoint."""

    def latest_checkpoint(self) -> Path | None: ...


class LocalSession:
    """One process, no Ray: checkpoints are kept under `checkpoints_dir`."""

    world_rank, world_size = 0, 1

    def __init__(self, checkpoints_dir: Path):
        self.checkpoints_dir = Path(checkpoints_dir)
        self.reports: list[dict[str, Any]] = []

    def prepare_model(self, model: Any) -> Any:
        return model

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        self.reports.append(metrics)
        if checkpoint is not None:
            target = self.checkpoints_dir / f"step-{metrics['step']:06d}"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(checkpoint, target)

    def latest_checkpoint(self) -> Path | None:
        found = sorted(self.checkpoints_dir.glob("step-*"))
        return found[-1] if found else None


def _device_and_precision(precision: str):
    """The device, the autocast context (None: float32 throughout) and the dtype to load the
    frozen base in: bfloat16 on CUDA under bf16, as `bench/train_gpu.py` measures (half the
    memory, no cast of every weight at every step); float32 on CPU, where autocast over
    float32 weights ran faster than bfloat16 weights (ENVIRONMENT.md: 283 vs 260 tokens/s).
    `auto` is bf16 on a CPU only where oneDNN has bf16 kernels for it (`hardware`)."""
    import torch

    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    native = hardware.cpu_has_bf16_kernels() if device.type == "cpu" else torch.cuda.is_bf16_supported()
    bf16 = precision == "bf16" or (precision == "auto" and native)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else None
    return device, autocast, torch.bfloat16 if bf16 and device.type == "cuda" else torch.float32


def lora_model(cfg: dict[str, Any], dtype: Any) -> Any:
    """The base at `cfg["model_path"]` in `dtype`, with fresh LoRA layers per `cfg`. peft
    keeps LoRA weights in float32 over a bfloat16 base (`autocast_adapter_dtype`), so the
    optimizer updates them at full precision and the adapter is saved in float32."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(cfg["model_path"], dtype=dtype)
    return get_peft_model(model, LoraConfig(
        r=cfg["lora_r"], lora_alpha=cfg["lora_alpha"], lora_dropout=cfg["lora_dropout"],
        target_modules=cfg["target_modules"], task_type="CAUSAL_LM"))


def _compiled(model: Any, peft_model: Any, mode: str, device: Any) -> Any:
    """What the steps call: `model` itself, or its `torch.compile` (which shares its weights,
    so training, checkpoints and `model.train()/eval()` still go through `model`). Compiled,
    the base attends causally with no mask (`causal_attention`): transformers would attend
    through a materialized one, and `collate`'s right padding makes causal alone exact."""
    import torch

    from flywheel.causal_attention import use_causal_attention

    if mode == "on" or (mode == "auto" and device.type == "cuda"):
        use_causal_attention(peft_model.get_base_model())
        return torch.compile(model, dynamic=True)  # one graph for every batch width, not one per width
    return model


def _all_reduce(values: list[float], op: str = "sum") -> list[float]:
    """`values` reduced elementwise across DDP ranks (`sum` or `max`); as given in one process."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor.tolist()


def _reduce_mean(total: float, count: float) -> float:
    total, count = _all_reduce([total, count])
    return total / max(count, 1)


def _any_rank(flag: bool) -> bool:
    """True on every rank when it is true on any: DDP ranks must stop at the same step."""
    return bool(_all_reduce([float(flag)], op="max")[0])


def run_sft(cfg: dict[str, Any], session: Session) -> dict[str, Any]:
    """Train a LoRA adapter; returns the final metrics. `cfg` keys: `model_path`,
    `dataset_path`, `output_dir`, `progress_file`, `chat_template` (text), optional
    `stop_file` (once it exists, training ends after the current step, keeping what it
    learned: how a cancelled turn stops mid-training), and the `TrainConfig` fields. Rank 0
    writes the adapter to `output_dir`."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, get_cosine_schedule_with_warmup

    rank, world = session.world_rank, session.world_size
    random.seed(cfg["seed"])
    torch.manual_seed(cfg["seed"])
    tokenizer = AutoTokenizer.from_pretrained(cfg["model_path"])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def load(split: str) -> tuple[list[Encoded], int]:
        path = Path(cfg["dataset_path"]) / f"{split}.jsonl"
        encoded = [encode(tokenizer, cfg["chat_template"], json.loads(line))
                   for line in path.read_text(encoding="utf-8").splitlines() if line]
        kept = [item for item in encoded if len(item.input_ids) <= cfg["max_seq_len"]]
        return kept, len(encoded) - len(kept)

    train, too_long = load("train")
    val, _ = load("val")
    if len(train) < world:
        raise ValueError(f"{len(train)} training examples fit max_seq_len {cfg['max_seq_len']}; need >= {world}")

    device, autocast, weights_dtype = _device_and_precision(cfg["precision"])
    if device.type == "cpu":  # one intra-op thread per reserved CPU: workers on a node must not oversubscribe it
        torch.set_num_threads(max(1, int(cfg["cpus_per_worker"])))
    model = lora_model(cfg, weights_dtype)
    checkpoint = session.latest_checkpoint()
    start = checkpoint or (Path(cfg["init_adapter_path"]) if cfg.get("init_adapter_path") else None)
    if start is not None:  # resuming, or warm-starting from an earlier adapter
        set_peft_model_state_dict(model, load_file(start / ADAPTER_WEIGHTS))
    peft_model = model
    model = session.prepare_model(model.to(device))
    step_model = _compiled(model, peft_model, cfg["compile"], device)
    learning_rate = cfg["learning_rate"] * (cfg["warm_start_lr_scale"] if cfg.get("init_adapter_path") else 1.0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate,
                                  weight_decay=cfg["weight_decay"])
    lengths = [len(item.input_ids) for item in train]
    steps_per_epoch = max(1, len(global_batches(lengths, cfg["batch_size"], world, cfg["seed"], 0)) // cfg["grad_accum"])
    total_steps = steps_per_epoch * cfg["epochs"]
    if cfg.get("max_steps"):
        total_steps = min(total_steps, cfg["max_steps"])
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(cfg["warmup_ratio"] * total_steps), total_steps)
    state = {"step": 0, "epoch": 0, "batch": 0, "best_val": None, "bad_epochs": 0, "resumed_from": None}
    if checkpoint is not None:
        saved = torch.load(checkpoint / STATE, weights_only=False)
        optimizer.load_state_dict(saved.pop("optimizer"))
        scheduler.load_state_dict(saved.pop("scheduler"))
        state.update(saved, resumed_from=saved["step"])

    def save_checkpoint(folder: Path) -> None:
        peft_model.save_pretrained(folder)
        torch.save({**state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                   folder / STATE)

    def report(metrics: dict[str, Any], with_checkpoint: bool) -> None:
        if rank != 0 or not with_checkpoint:
            session.report(metrics, None)
            return
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(Path(folder))
            session.report(metrics, Path(folder))

    def forward(batch: list[Encoded]):
        inputs = {key: value.to(device) for key, value in collate(batch, pad_id).items()}
        if autocast is None:
            return step_model(**inputs).loss
        with autocast:
            return step_model(**inputs).loss

    def validation_loss() -> float | None:
        if not val:
            return None
        model.eval()
        total = count = 0.0
        with torch.no_grad():
            for start in range(rank * cfg["batch_size"], len(val), world * cfg["batch_size"]):
                batch = val[start:start + cfg["batch_size"]]
                tokens = sum(sum(label != IGNORE for label in item.labels[1:]) for item in batch)
                total += forward(batch).item() * tokens
                count += tokens
        model.train()
        return _reduce_mean(total, count)

    progress = Path(cfg["progress_file"]) if rank == 0 and cfg.get("progress_file") else None
    stop_file = Path(cfg["stop_file"]) if cfg.get("stop_file") else None
    model.train()
    started, tokens_seen, loss_sum, loss_count = time.monotonic(), 0, 0.0, 0
    metrics: dict[str, Any] = {"step": state["step"], "total_steps": total_steps, "dropped_too_long": too_long}
    done = state["step"] >= total_steps
    while not done and state["epoch"] < cfg["epochs"]:
        batches = global_batches(lengths, cfg["batch_size"], world, cfg["seed"], state["epoch"])
        usable = len(batches) - len(batches) % cfg["grad_accum"]
        for index in range(state["batch"], usable):
            mine = [train[i] for i in shard(batches[index], rank, world)]
            loss = forward(mine) / cfg["grad_accum"]
            loss.backward()
            tokens_seen += sum(len(item.input_ids) for item in mine)
            loss_sum, loss_count = loss_sum + loss.item() * cfg["grad_accum"], loss_count + 1
            if (index + 1) % cfg["grad_accum"]:
                continue
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["max_grad_norm"])
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.update(step=state["step"] + 1, batch=index + 1)
            elapsed = time.monotonic() - started
            metrics = {**metrics, "step": state["step"], "epoch": state["epoch"], "loss": loss_sum / loss_count,
                       "learning_rate": scheduler.get_last_lr()[0], "tokens_per_s": tokens_seen * world / elapsed,
                       "resumed_from": state["resumed_from"]}
            loss_sum, loss_count = 0.0, 0
            if progress is not None:
                with progress.open("a") as handle:
                    handle.write(json.dumps(metrics) + "\n")
            done = state["step"] >= total_steps
            if not done and stop_file is not None and _any_rank(stop_file.exists()):
                done, metrics["stopped"] = True, "requested"
            if state["step"] % cfg["checkpoint_every"] == 0 and not done:
                report(metrics, with_checkpoint=True)
            if done:
                break
        if not done:
            state.update(epoch=state["epoch"] + 1, batch=0)
        val_loss = None if "stopped" in metrics else validation_loss()  # a stop means now
        metrics["val_loss"] = val_loss
        if val_loss is not None and cfg.get("early_stopping_patience"):
            if state["best_val"] is None or val_loss < state["best_val"]:
                state.update(best_val=val_loss, bad_epochs=0)
            else:
                state["bad_epochs"] += 1
                done = done or state["bad_epochs"] >= cfg["early_stopping_patience"]
                metrics["stopped_early"] = done
        if not done:
            report(metrics, with_checkpoint=True)
    metrics["train_seconds"] = time.monotonic() - started
    if rank == 0:
        _save_atomically(peft_model, Path(cfg["output_dir"]))
    report(metrics, with_checkpoint=True)
    return metrics


def _save_atomically(model: Any, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    model.save_pretrained(staging)
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
