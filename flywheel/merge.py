"""A student as a standalone model: its LoRA adapter merged into the base weights (peft's
`merge_and_unload`) and saved as a Hugging Face folder that vLLM, transformers or any other
server loads with no adapter support, and no per-request LoRA cost.

The folder carries the tokenizer with the chat template the student was trained with, and
`flywheel_export.json`: the adapter's record (dataset, hyperparameters, metrics) and, when
curation pruned a shared system prompt and tools, that prefix. Such a student learned
without them: send it requests without the system prompt and render no tool schemas
(`chat_template_kwargs: {"render_tools": false}`), as the flywheel's ingress does.
The merge runs in float32 and the result is rounded once to the chosen dtype. Before saving,
its logits on a probe prompt are compared with the adapter's in float32
(`max_logit_difference`): in float32 they should not change; in bfloat16 they move by about
as much as rounding the base model alone to bfloat16 moves its own.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from flywheel.adapters import load_adapter
from flywheel.config import FlywheelConfig
from flywheel.models import resolve_model_path

EXPORT_RECORD = "flywheel_export.json"
DTYPES = ("bfloat16", "float16", "float32")
PROBE = [{"role": "user", "content": "Where is my order ORD-1042? It was due on Monday."}]


def merge_adapter(config: FlywheelConfig, adapter_id: str, out: Path | None = None, dtype: str = "bfloat16",
                  force: bool = False) -> dict[str, Any]:
    """Merge `adapter_id` into its base and write the folder to `out` (default
    `<home>/exports/<adapter id>`), atomically; an existing folder is replaced only with
    `force`. Returns `adapter_id`, `base_model`, `path`, `dtype`, `parameters`,
    `max_logit_difference` and `seconds`."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    version = load_adapter(config.adapters_dir, adapter_id)
    served = config.model(version.base_model)
    base_path = resolve_model_path(served.source, config.models_dir)
    out = Path(out or config.home / "exports" / adapter_id).expanduser().resolve()
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists: pass --force to replace it")

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flywheel.chat_templates import chat_template_path

    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    tokenizer.chat_template = Path(chat_template_path(served.chat_template or "chatml_tools")).read_text()
    probe = tokenizer.apply_chat_template(PROBE, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    # merged in float32 and rounded once to `dtype`, so the reference logits are the adapter's
    # exact ones and the result carries a single rounding
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32),
                                      version.path)
    with torch.no_grad():
        expected = tuned(**probe).logits
        merged = tuned.merge_and_unload().to(getattr(torch, dtype))
        difference = (merged(**probe).logits.float() - expected).abs().max().item()

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        record = {"adapter": version.model_dump(mode="json"), "base_path": str(base_path), "dtype": dtype,
                  "max_logit_difference": difference, "merged_at": time.time(), "prefix": version.prefix}
        (staging / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"adapter_id": adapter_id, "base_model": version.base_model, "path": str(out), "dtype": dtype,
            "parameters": sum(parameter.numel() for parameter in merged.parameters()),
            "max_logit_difference": difference, "prefix_pruned": version.prefix is not None,
            "seconds": time.monotonic() - started}
