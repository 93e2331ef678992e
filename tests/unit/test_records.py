"""Reading the log formats users already have into `LogRecord`s."""

import json

import pytest

from flywheel.records import LogRecord, canonical_tool_calls, record_from_json

NVIDIA = {  # the blueprint's quickstart record (FORMATS.md), arguments as an object
    "request": {"model": "meta/llama-3.1-70b-instruct",
                "messages": [{"role": "system", "content": "..."},
                             {"role": "user", "content": "Has my bill been processed?"}],
                "tools": [{"type": "function", "function": {"name": "structured_rag", "parameters": {
                    "type": "object", "properties": {"query": {"type": "string"}, "user_id": {"type": "string"}},
                    "required": ["query", "user_id"]}}}]},
    "response": {"choices": [{"message": {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "structured_rag",
                                          "arguments": {"query": "account bill processed", "user_id": "4165"}}}]}}]},
    "workload_id": "primary_assistant", "client_id": "aiva-1", "timestamp": 1746138417,
}


def tool_call(record: LogRecord) -> dict:
    return record.response["choices"][0]["message"]["tool_calls"][0]["function"]


def test_nvidia_blueprint_record():
    record = record_from_json(NVIDIA)
    assert (record.workload_id, record.client_id, record.model) == ("primary_assistant", "aiva-1",
                                                                    "meta/llama-3.1-70b-instruct")
    assert record.timestamp == 1746138417
    assert tool_call(record)["name"] == "structured_rag"
    assert json.loads(tool_call(record)["arguments"]) == {"query": "account bill processed", "user_id": "4165"}
    assert record.request["tools"][0]["function"]["name"] == "structured_rag"


def test_arguments_as_object_or_string_give_the_same_record():
    as_string = json.loads(json.dumps(NVIDIA))
    function = as_string["response"]["choices"][0]["message"]["tool_calls"][0]["function"]
    function["arguments"] = json.dumps(function["arguments"])
    assert record_from_json(as_string) == record_from_json(NVIDIA)


def test_ids_are_stable_across_imports_and_sort_by_time():
    earlier = {**NVIDIA, "timestamp": NVIDIA["timestamp"] - 60}
    assert record_from_json(NVIDIA).id == record_from_json(json.loads(json.dumps(NVIDIA))).id
    assert record_from_json(earlier).id < record_from_json(NVIDIA).id
    chat = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert record_from_json(chat).id == record_from_json(chat).id  # no timestamp: still stable


def test_an_exported_record_keeps_its_own_id():
    """A served record's id is random: a restored export must not store it a second time."""
    served = record_from_json(NVIDIA).model_copy(update={"id": "01JBX3T6W8Z4Q2M7N5K9R1C0DE"})
    assert record_from_json(json.loads(served.model_dump_json())).id == served.id
    assert record_from_json({**NVIDIA, "id": "chatcmpl-123"}).id == record_from_json(NVIDIA).id  # not a ULID


def test_overrides_and_chat_records():
    record = record_from_json(NVIDIA, workload_id="w2", client_id="c2")
    assert (record.workload_id, record.client_id) == ("w2", "c2")
    chat = record_from_json({"messages": [{"role": "user", "content": "Where is 12?"},
                                          {"role": "assistant", "content": None, "tool_calls": [
                                              {"function": {"name": "lookup", "arguments": {"id": 12}}}]}],
                             "tools": [{"type": "function", "function": {"name": "lookup"}}]})
    assert chat.request["messages"] == [{"role": "user", "content": "Where is 12?"}]
    assert chat.response["choices"][0]["finish_reason"] == "tool_calls"
    assert json.loads(tool_call(chat)["arguments"]) == {"id": 12}
    assert (chat.workload_id, chat.client_id) == ("default", "import")


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ([1, 2], "not a JSON object"),
        ({"hello": 1}, "expected"),
        ({**NVIDIA, "timestamp": "yesterday"}, "timestamp"),
        ({**NVIDIA, "response": {"choices": []}}, "choices"),
        ({**NVIDIA, "request": {"messages": []}}, "messages"),
        ({k: v for k, v in NVIDIA.items() if k != "workload_id"}, "workload_id"),
        ({"messages": [{"role": "user", "content": "no answer"}]}, "assistant"),
        ({**NVIDIA, "response": {"choices": [{"message": {"role": "assistant", "tool_calls": [
            {"function": {"arguments": "{}"}}]}}]}}, "function name"),
        ({**NVIDIA, "status": "maybe"}, "status"),
        ({**NVIDIA, "response": None}, "choices"),  # only an errored record may lack its response
        ({**NVIDIA, "feedback": {"rating": 1}}, "feedback"),
        ({**NVIDIA, "feedback": [{"rating": 11}]}, "rating"),
        ({**NVIDIA, "workload_id": "../support"}, r"workload_id '\.\./support': use letters.*\(or pass --workload\)"),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
          "workload_id": "w" * 101}, "at most 100 characters"),
    ],
)
def test_bad_records_say_why(obj, reason):
    with pytest.raises(ValueError, match=reason):
        record_from_json(obj)


def test_canonical_tool_calls_leaves_plain_messages_alone():
    message = {"role": "assistant", "content": "hello"}
    assert canonical_tool_calls(message) is message


def test_exported_records_keep_status_error_and_feedback():
    """`flywheel logs export` -> `import` keeps what curation needs: failures and feedback."""
    failed = record_from_json({**NVIDIA, "response": None, "status": "error", "error": "upstream timeout"})
    assert (failed.status, failed.error, failed.response) == ("error", "upstream timeout", None)
    correction = {"role": "assistant", "content": "Paid on May 2."}
    rated = record_from_json({**NVIDIA, "feedback": [{"rating": -1, "correction": correction}]})
    assert rated.feedback[0].rating == -1 and rated.feedback[0].correction == correction
    again = record_from_json(json.loads(rated.model_dump_json()))
    assert again.id == rated.id and again.feedback == rated.feedback
