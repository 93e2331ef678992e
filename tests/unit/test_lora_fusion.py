"""`fuse_lora_projections` computes what peft computes: the same loss and the same LoRA
gradients on a tiny random Llama (CPU, float32 exactly up to summation order; under bf16
autocast no further from float32 than peft itself is), with the adapter's parameters, their
names and its saved weights unchanged."""

from __future__ import annotations

import copy

import pytest

from flywheel.lora_fusion import fuse_lora_projections

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def base():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2))


def lora(base, **settings):
    """`base` with LoRA on every linear layer, B drawn at random (peft starts it at zero, which would
    hide a wrong B side) with a fixed seed, so two calls give the same adapter."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    model = get_peft_model(copy.deepcopy(base), LoraConfig(**{"r": 8, "lora_alpha": 16, "target_modules": "all-linear",
                                                               "task_type": "CAUSAL_LM", **settings}))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.2)
    return model


def loss_and_grads(model, tokens, bf16: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(input_ids=tokens, labels=tokens).loss
    loss.backward()
    return loss.item(), {name: p.grad for name, p in model.named_parameters() if p.requires_grad}


def worst_error(grads, reference):
    return max(((grads[name] - reference[name]).norm() / reference[name].norm()).item() for name in reference)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 300, (2, 33), generator=torch.Generator().manual_seed(2))


def test_fused_projections_give_peft_s_loss_and_gradients_in_float32(base, tokens):
    reference, fused = lora(base), lora(base)
    assert fuse_lora_projections(fused) == 4  # 2 layers x (q/k/v, gate/up)
    reference_loss, reference_grads = loss_and_grads(reference, tokens, bf16=False)
    loss, grads = loss_and_grads(fused, tokens, bf16=False)

    assert loss == pytest.approx(reference_loss, rel=1e-5)
    assert grads.keys() == reference_grads.keys() and len(grads) == 2 * 7 * 2  # A and B of 7 linears x 2 layers
    assert worst_error(grads, reference_grads) < 1e-4


def test_under_bf16_autocast_fusion_is_as_close_to_float32_as_peft_is(base, tokens):
    _, exact = loss_and_grads(lora(base), tokens, bf16=False)
    reference_loss, reference_grads = loss_and_grads(lora(base), tokens, bf16=True)
    fused = lora(base)
    fuse_lora_projections(fused)
    loss, grads = loss_and_grads(fused, tokens, bf16=True)

    assert loss == pytest.approx(reference_loss, rel=1e-2)
    assert {g.dtype for g in grads.values()} == {torch.float32}  # the optimizer still sees float32 LoRA weights
    peft_error = worst_error(reference_grads, exact)
    assert 0 < worst_error(grads, exact) < 2 * peft_error + 1e-3, (worst_error(grads, exact), peft_error)


def test_training_the_fused_model_trains_peft_s_parameters_and_saves_the_same_adapter(base, tokens, tmp_path):
    fused = lora(base)
    before = {name: p.detach().clone() for name, p in fused.named_parameters()}
    fuse_lora_projections(fused)
    optimizer = torch.optim.AdamW([p for p in fused.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss_and_grads(fused, tokens, bf16=False)
        optimizer.step()

    after = dict(fused.named_parameters())
    assert after.keys() == before.keys()  # no parameter added or renamed: checkpoints load either way
    for name, parameter in after.items():
        assert torch.equal(parameter, before[name]) != parameter.requires_grad, name  # LoRA moved, the base did not
    fused.save_pretrained(tmp_path)
    unfused = lora(base)
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(unfused, load_file(tmp_path / "adapter_model.safetensors"))
    assert loss_and_grads(unfused, tokens, bf16=False)[0] == pytest.approx(loss_and_grads(fused, tokens, False)[0],
                                                                           rel=1e-5)


def test_layers_fusion_cannot_express_run_as_peft_runs_them(base):
    assert fuse_lora_projections(lora(base, lora_dropout=0.1)) == 0  # dropout draws a mask per projection
    assert fuse_lora_projections(lora(base, target_modules=["q_proj", "v_proj", "up_proj"])) == 0  # partial groups
    attention_only = lora(base, target_modules=["q_proj", "k_proj", "v_proj"])
    assert fuse_lora_projections(attention_only) == 2
    assert fuse_lora_projections(attention_only) == 0  # a second call leaves fused groups alone
