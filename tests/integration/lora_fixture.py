"""A real PEFT adapter made in-test: a few LoRA steps on SmolLM2 teaching one answer.

Kept deliberately small (one conversation, loss on assistant tokens only, rendered with
the same chat template the service uses); the real training stage is [S4].
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from flywheel.chat_templates import chat_template_path


def train_adapter(model_path: Path, out: Path, conversation: list[dict], tools: list[dict] | None,
                  max_steps: int = 60, seed: int = 0) -> float:
    """Fit `conversation`'s assistant turns until the loss is tiny; save to `out` atomically.

    Returns the final loss.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    template = Path(chat_template_path("chatml_tools")).read_text()
    encoded = tokenizer.apply_chat_template(
        conversation, tools=tools, chat_template=template, tokenize=True, return_dict=True,
        return_assistant_tokens_mask=True, return_tensors="pt",
    )
    input_ids = encoded["input_ids"]
    labels = torch.where(encoded["assistant_masks"].bool(), input_ids, torch.tensor(-100))
    assert (labels != -100).any(), "no assistant tokens to learn"

    model = AutoModelForCausalLM.from_pretrained(model_path, torch_dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"],
                                             lora_dropout=0.0, task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    loss = float("inf")
    for _ in range(max_steps):
        loss_t = model(input_ids=input_ids, labels=labels).loss
        loss_t.backward()
        optimizer.step()
        optimizer.zero_grad()
        loss = loss_t.item()
        if loss < 0.02:
            break
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    model.save_pretrained(staging)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)  # the service never sees a half-written adapter
    return loss
