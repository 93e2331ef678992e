"""`merge_adapter` / `flywheel merge`: a LoRA adapter on the tiny random Llama merged into
its base, loaded back with plain transformers (no peft) and compared with the adapter."""

from __future__ import annotations

import json

import pytest

from flywheel.adapters import AdapterVersion
from flywheel.config import FlywheelConfig
from flywheel.merge import EXPORT_RECORD, merge_adapter
from tests.unit.test_cli_logs import flywheel, last_json
from tests.unit.tiny_llama import TEMPLATE

PREFIX = {"hash": "abc", "system": "You route support requests.", "tools": []}


@pytest.fixture
def trained(tiny_model, tmp_path):
    """A config serving the tiny model as `tiny` and an adapter `student-1` on it whose LoRA
    weights are random (peft's default init would make it a no-op)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    home = tmp_path / "home"
    config = FlywheelConfig.model_validate({"home": str(home),
                                            "serve": {"models": [{"name": "tiny", "source": str(tiny_model)}]}})
    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    path = config.adapters_dir / "tiny" / "student-1"
    model.save_pretrained(path)
    AdapterVersion(adapter_id="student-1", base_model="tiny", workload_id="support", dataset_id="support-abc",
                   dataset_hash="abc", hyperparameters={"lora_r": 4}, metrics={"loss": 0.5}, path=path,
                   prefix=PREFIX).save()
    return config


def logits(path, text: str, adapter=None):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    ids = AutoTokenizer.from_pretrained(path)(text, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def test_the_merged_model_answers_as_the_adapter_did_without_peft(trained, tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = merge_adapter(trained, "student-1", dtype="float32")
    merged = trained.home / "exports" / "student-1"
    assert result["path"] == str(merged) and result["max_logit_difference"] < 1e-4
    base_parameters = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model).parameters())
    assert result["parameters"] == base_parameters  # LoRA folded in, nothing added
    assert not (merged / "adapter_config.json").exists()
    text = "where is order O7?"
    adapted = logits(tiny_model, text, adapter=trained.adapters_dir / "tiny" / "student-1")
    assert (logits(merged, text) - adapted).abs().max() < 1e-4
    assert (logits(tiny_model, text) - adapted).abs().max() > 1e-2  # the adapter did change the model
    record = json.loads((merged / EXPORT_RECORD).read_text())
    assert record["adapter"]["dataset_id"] == "support-abc" and record["prefix"] == PREFIX
    assert AutoTokenizer.from_pretrained(merged).chat_template == TEMPLATE  # what the student was trained with

    with pytest.raises(FileExistsError, match="--force"):
        merge_adapter(trained, "student-1")
    again = merge_adapter(trained, "student-1", force=True)  # bfloat16 by default: rounding, not a new model
    assert 0 < again["max_logit_difference"] < 1.0 and again["dtype"] == "bfloat16"
    with pytest.raises(FileNotFoundError, match="no adapter 'nope'"):
        merge_adapter(trained, "nope")
    with pytest.raises(ValueError, match="dtype"):
        merge_adapter(trained, "student-1", dtype="int8")


def test_flywheel_merge_prints_one_json_object_and_one_line_errors(trained, tmp_path):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(json.dumps({"serve": {"models": [{"name": "tiny", "source": trained.serve.models[0].source}]}}))
    home = trained.home
    result = last_json(flywheel("merge", "--adapter", "student-1", "--out", str(tmp_path / "out"), "--dtype", "float32",
                                "--config", str(config_file), "--json", home=home))
    assert result["path"] == str(tmp_path / "out") and result["prefix_pruned"] is True
    assert (tmp_path / "out" / "config.json").is_file()
    shown = flywheel("merge", "--adapter", "student-1", "--out", str(tmp_path / "out"), "--config", str(config_file),
                     home=home)
    assert shown.returncode == 2 and shown.stderr.strip().count("\n") == 0 and "--force" in shown.stderr
    missing = flywheel("merge", "--adapter", "nope", "--config", str(config_file), home=home)
    assert missing.returncode == 2 and "no adapter 'nope'" in missing.stderr
