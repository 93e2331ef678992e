"""`flywheel demo` until the full flywheel lands ([S8]): the service answering the
`openai` client the way users will call it — a chat, a streamed chat, a tool request."""

from __future__ import annotations

import time

from rich.console import Console

from flywheel.config import FlywheelConfig

ORDER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_order_status",
        "description": "Look up the shipping status of a customer's order.",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "string", "description": "Order number"}},
            "required": ["order_id"],
        },
    },
}


def run_demo(url: str, config: FlywheelConfig, console: Console) -> dict:
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="not-needed")
    models = [m.id for m in client.models.list().data]
    console.print(f"models served at {url}/v1: {', '.join(models)}")
    model = next(iter(config.serve.aliases), config.serve.models[0].name)
    question = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]

    started = time.perf_counter()
    reply = client.chat.completions.create(model=model, messages=question, max_tokens=48, temperature=0)
    chat_s = time.perf_counter() - started
    console.print(f"\n[bold]chat[/bold] ({reply.model}, {chat_s:.2f} s): {reply.choices[0].message.content}")

    console.print("\n[bold]streamed chat[/bold]: ", end="")
    started, first_token_s, streamed = time.perf_counter(), None, []
    for chunk in client.chat.completions.create(model=model, messages=question, max_tokens=48,
                                                temperature=0, stream=True):
        delta = chunk.choices[0].delta.content if chunk.choices else None
        if delta:
            first_token_s = first_token_s or time.perf_counter() - started
            streamed.append(delta)
            console.print(delta, end="", highlight=False)
    console.print(f"\n(first token after {first_token_s or 0:.2f} s)")

    ask = [{"role": "user", "content": "Where is my order 4521?"}]
    tool_reply = client.chat.completions.create(model=model, messages=ask, tools=[ORDER_TOOL],
                                                max_tokens=64, temperature=0)
    message = tool_reply.choices[0].message
    calls = [{"name": c.function.name, "arguments": c.function.arguments} for c in message.tool_calls or []]
    console.print(f"\n[bold]tool request[/bold]: tool_calls={calls} content={message.content!r}")
    console.print("[dim](the base model rarely calls tools; fine-tuned students learn to — see [S4])[/dim]")
    return {
        "url": url,
        "models": models,
        "chat": {"model": reply.model, "content": reply.choices[0].message.content,
                 "seconds": round(chat_s, 3)},
        "stream": {"content": "".join(streamed), "ttft_s": round(first_token_s or 0, 3)},
        "tool_request": {"tool_calls": calls, "content": message.content},
    }
