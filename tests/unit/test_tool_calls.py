"""The tool-call format end to end, without a model: our chat template renders an
assistant's OpenAI `tool_calls` as Hermes `<tool_call>` text, and vLLM's `hermes`
parser (the one the service runs) reads that text back into the same calls."""

import json
from pathlib import Path

import pytest
from transformers.utils.chat_template_utils import render_jinja_template
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.tool_parsers.hermes_tool_parser import Hermes2ProToolParser

from flywheel.chat_templates import chat_template_path

TEMPLATE = Path(chat_template_path("chatml_tools")).read_text()
TOOLS = [
    {"type": "function", "function": {"name": "get_order_status", "parameters": {
        "type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}},
    {"type": "function", "function": {"name": "issue_refund", "parameters": {
        "type": "object", "properties": {"order_id": {"type": "string"}, "amount": {"type": "number"}}}}},
]


def render(messages, tools=TOOLS, **kwargs):
    (text,), spans = render_jinja_template([messages], tools=tools, chat_template=TEMPLATE, **kwargs)
    return (text, spans[0]) if kwargs.get("return_assistant_tokens_mask") else text


def assistant_text(calls, content=None):
    """What the model must generate for `calls`: the rendered assistant turn's body."""
    text, spans = render([{"role": "user", "content": "q"},
                          {"role": "assistant", "content": content, "tool_calls": calls}],
                         return_assistant_tokens_mask=True)
    (start, end), = spans
    return text[start:end].removesuffix("<|im_end|>")


def parse(text):
    parser = Hermes2ProToolParser(tokenizer=object())
    request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "q"}], tools=TOOLS)
    return parser.extract_tool_calls(text, request)


def test_tools_are_rendered_in_the_system_turn():
    text = render([{"role": "system", "content": "You are support."}, {"role": "user", "content": "hi"}],
                  add_generation_prompt=True)
    system = text.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nYou are support.\n\n# Tools")
    for tool in TOOLS:
        assert json.dumps(tool["function"]) in system
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_without_tools_it_is_plain_chatml_with_the_default_system_prompt():
    text = render([{"role": "user", "content": "hi"}], tools=None, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("arguments", ['{"order_id": "A-17"}', {"order_id": "A-17"}])
def test_rendered_call_parses_back_to_the_same_call(arguments):
    """Arguments arrive as a JSON string (OpenAI API) or an object (NVIDIA blueprint logs)."""
    calls = [{"type": "function", "function": {"name": "get_order_status", "arguments": arguments}}]
    parsed = parse(assistant_text(calls))
    assert parsed.tools_called
    (call,) = parsed.tool_calls
    assert call.function.name == "get_order_status"
    assert json.loads(call.function.arguments) == {"order_id": "A-17"}


def test_several_calls_and_leading_content_survive_the_round_trip():
    calls = [{"function": {"name": "get_order_status", "arguments": {"order_id": "9"}}},
             {"function": {"name": "issue_refund", "arguments": {"order_id": "9", "amount": 12.5}}}]
    parsed = parse(assistant_text(calls, content="Let me check."))
    assert [c.function.name for c in parsed.tool_calls] == ["get_order_status", "issue_refund"]
    assert json.loads(parsed.tool_calls[1].function.arguments)["amount"] == 12.5
    assert parsed.content.strip() == "Let me check."


def test_plain_text_is_not_a_tool_call_and_broken_json_does_not_crash():
    assert not parse("Your order shipped yesterday.").tools_called
    broken = parse('<tool_call>\n{"name": "get_order_status", "arguments": {"order_id": \n</tool_call>')
    assert not broken.tools_called and "<tool_call>" in broken.content


def test_only_assistant_turns_are_marked_for_the_loss():
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"},
                {"role": "assistant", "content": None,
                 "tool_calls": [{"function": {"name": "get_order_status", "arguments": {"order_id": "1"}}}]},
                {"role": "tool", "content": '{"status": "shipped"}'},
                {"role": "assistant", "content": "It shipped."}]
    text, spans = render(messages, return_assistant_tokens_mask=True)
    marked = [text[start:end] for start, end in spans]
    assert marked[0].startswith("<tool_call>") and marked[0].endswith("</tool_call><|im_end|>")
    assert marked[1] == "It shipped.<|im_end|>"
    assert not any("U1" in part or "shipped\"}" in part for part in marked)
