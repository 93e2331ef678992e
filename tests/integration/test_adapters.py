"""An adapter folder written while the service runs is served by name, with no restart,
and changes what the model answers — here it teaches SmolLM2 one tool call."""

from __future__ import annotations

import json

import httpx
import pytest
from openai import OpenAI

from tests.integration.conftest import MODEL
from tests.integration.lora_fixture import train_adapter

pytestmark = pytest.mark.integration

ORDER_TOOL = {"type": "function", "function": {
    "name": "get_order_status", "description": "Look up the shipping status of an order.",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}}
ASK = [{"role": "system", "content": "You are a customer-support agent."},
       {"role": "user", "content": "Where is my order 4521?"}]
CALL = {"type": "function", "function": {"name": "get_order_status", "arguments": {"order_id": "4521"}}}


@pytest.fixture(scope="module")
def adapter(service) -> str:
    name = "order-tool"
    loss = train_adapter(service.models_dir / MODEL, service.adapter_dir(name),
                         ASK + [{"role": "assistant", "content": None, "tool_calls": [CALL]}], tools=[ORDER_TOOL])
    assert loss < 0.1, f"the adapter did not learn its one example (loss {loss:.3f})"
    return f"{MODEL}:{name}"


@pytest.fixture(scope="module")
def client(service) -> OpenAI:
    return OpenAI(base_url=service.base_url, api_key="unused", max_retries=0, timeout=120)


def test_new_adapter_is_listed_without_restart(client, adapter):
    assert adapter in {m.id for m in client.models.list().data}


def test_adapter_answers_with_a_parsed_tool_call_and_the_base_does_not(client, adapter):
    tuned = client.chat.completions.create(model=adapter, messages=ASK, tools=[ORDER_TOOL], max_tokens=64,
                                           temperature=0)
    assert tuned.model == adapter
    choice = tuned.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_order_status"
    assert json.loads(call.function.arguments) == {"order_id": "4521"}

    base = client.chat.completions.create(model=MODEL, messages=ASK, tools=[ORDER_TOOL], max_tokens=64,
                                          temperature=0)
    assert base.model == MODEL
    assert not base.choices[0].message.tool_calls


def test_streamed_tool_call_from_the_adapter(client, adapter):
    chunks = list(client.chat.completions.create(model=adapter, messages=ASK, tools=[ORDER_TOOL],
                                                 max_tokens=64, temperature=0, stream=True))
    names = [tc.function.name for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []
             if tc.function and tc.function.name]
    arguments = "".join(tc.function.arguments or "" for c in chunks if c.choices
                        for tc in c.choices[0].delta.tool_calls or [] if tc.function)
    assert names == ["get_order_status"]
    assert json.loads(arguments) == {"order_id": "4521"}


def test_adapter_and_base_interleave_under_concurrency(service, adapter):
    """Base and adapter requests batched together each keep their own behaviour."""
    import concurrent.futures

    def ask(model):
        body = {"model": model, "messages": ASK, "tools": [ORDER_TOOL], "max_tokens": 48, "temperature": 0}
        return httpx.post(f"{service.base_url}/chat/completions", json=body, timeout=120).json()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(ask, [adapter, MODEL] * 4))
    for model, reply in zip([adapter, MODEL] * 4, replies):
        called = bool(reply["choices"][0]["message"].get("tool_calls"))
        assert called == (model == adapter), reply


def test_adapter_outside_the_served_lora_modules_is_refused_with_400(service, client):
    """configs/local.yaml serves LoRA on attention only; an MLP adapter gets a clear 400."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(service.models_dir / MODEL, torch_dtype=torch.float32)
    config = LoraConfig(r=4, target_modules=["gate_proj"], init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(service.adapter_dir("mlp-only"))

    response = httpx.post(f"{service.base_url}/chat/completions", timeout=60,
                          json={"model": f"{MODEL}:mlp-only", "messages": ASK, "max_tokens": 4})
    assert response.status_code == 400, response.text
    assert "mlp-only" in response.json()["error"]["message"]
    ok = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, temperature=0)
    assert ok.choices[0].message.content is not None
