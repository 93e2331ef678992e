"""`support-tools`: production-like logs of a customer-support agent that calls tools.

Each record is what NVIDIA's Data Flywheel Blueprint logs for a large teacher model: the
OpenAI request (system prompt, conversation, 10 typed tools) and the teacher's response,
whose tool call is correct for the request (arguments as a JSON object in about half the
records, as a string in the rest, as real logs have both). Phrasing varies: several
templates per intent, politeness, casing, typos, and entities (order ids, emails,
amounts, dates, discount codes); some conversations have an earlier clarifying turn.

A share of records must not reach training: upstream errors, empty answers, exact
repeats, answers the user rated down (a few with a reviewer's correction, which must be
kept, corrected), and answers from another model. Same seed, same file, byte for byte.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from typing import Any

WORKLOAD_ID = "support-tools"
TEACHER = "llama-3.3-70b-instruct"
OTHER_MODEL = "smollm2-135m-instruct"
START = 1_767_225_600  # 2026-01-01T00:00:00Z: timestamps do not depend on when it runs
SYSTEM = ("You are the support assistant of Northwind, an online shop. Help customers with orders, refunds, "
          "returns, shipping and products. When a tool can answer or act, call it with exact arguments "
          "taken from the conversation; otherwise answer briefly and politely.")
REASONS = ["damaged", "late", "wrong_item", "not_as_described", "changed_mind"]
REASON_WORDS = {"damaged": ["arrived broken", "is damaged", "came cracked"],
                "late": ["never arrived on time", "is two weeks late", "is still not here"],
                "wrong_item": ["is the wrong item", "is not what I ordered", "was the wrong size"],
                "not_as_described": ["looks nothing like the photos", "is not as described"],
                "changed_mind": ["is not needed anymore", "I changed my mind about"]}
PRODUCTS = ["trail running shoes", "espresso machine", "wool blanket", "desk lamp", "rain jacket",
            "yoga mat", "bluetooth speaker", "cast iron pan", "backpack", "coffee grinder"]
CITIES = [("Berlin", "10115", "DE"), ("Lyon", "69001", "FR"), ("Austin", "73301", "US"),
          ("Leeds", "LS1 4AP", "GB"), ("Porto", "4000-123", "PT")]
STREETS = ["Main Street", "Oak Avenue", "Rue de la Paix", "Hauptstrasse", "King's Road"]
NAMES = ["anna", "ben", "chloe", "dev", "emma", "farid", "grace", "hugo", "ines", "jonas"]
DOMAINS = ["example.com", "mail.test", "inbox.example.org"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October"]


def _fn(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": required}}}


S = {"type": "string"}
TOOLS = [
    _fn("get_order_status", "Look up where an order is.", {"order_id": S}, ["order_id"]),
    _fn("cancel_order", "Cancel an order that has not shipped.",
        {"order_id": S, "reason": {"type": "string", "enum": REASONS}}, ["order_id"]),
    _fn("request_refund", "Refund (part of) an order.",
        {"order_id": S, "amount": {"type": "number"}, "reason": {"type": "string", "enum": REASONS}},
        ["order_id", "amount", "reason"]),
    _fn("start_return", "Open a return for an order.",
        {"order_id": S, "reason": {"type": "string", "enum": REASONS}}, ["order_id", "reason"]),
    _fn("update_shipping_address", "Change where an order ships.",
        {"order_id": S, "street": S, "city": S, "postal_code": S, "country": S},
        ["order_id", "street", "city", "postal_code", "country"]),
    _fn("check_product_availability", "Is a product in stock (in a size)?",
        {"product": S, "size": S}, ["product"]),
    _fn("escalate_to_human", "Hand the conversation to a human agent.",
        {"reason": S, "priority": {"type": "string", "enum": ["low", "normal", "high"]}}, ["reason", "priority"]),
    _fn("send_invoice", "Email the invoice of an order.", {"order_id": S, "email": S}, ["order_id", "email"]),
    _fn("apply_discount_code", "Apply a discount code to an order.", {"order_id": S, "code": S},
        ["order_id", "code"]),
    _fn("schedule_delivery", "Choose a delivery date for an order.", {"order_id": S, "date": S},
        ["order_id", "date"]),
]
TOOL_NAMES = [tool["function"]["name"] for tool in TOOLS]


class _Entities:
    """Random but reproducible values for one record."""

    def __init__(self, rng: random.Random):
        self.order_id = f"ORD-{rng.randint(100000, 999999)}"
        self.amount = round(rng.uniform(5, 400), 2) if rng.random() < 0.6 else float(rng.randint(5, 400))
        self.reason = rng.choice(REASONS)
        self.product = rng.choice(PRODUCTS)
        self.size = rng.choice(["S", "M", "L", "XL", "42", "9.5"]) if rng.random() < 0.5 else None
        self.email = f"{rng.choice(NAMES)}.{rng.choice(NAMES)}{rng.randint(1, 99)}@{rng.choice(DOMAINS)}"
        self.city, self.postal_code, self.country = rng.choice(CITIES)
        self.street = f"{rng.randint(1, 250)} {rng.choice(STREETS)}"
        self.code = rng.choice(["SPRING", "WELCOME", "VIP", "FLASH"]) + str(rng.randint(10, 50))
        self.month, self.day = rng.randrange(len(MONTHS)), rng.randint(1, 28)

    def date_text(self, rng: random.Random) -> str:
        return rng.choice([f"{MONTHS[self.month]} {self.day}", f"2026-{self.month + 1:02d}-{self.day:02d}"])

    def amount_text(self, rng: random.Random) -> str:
        return rng.choice([f"${self.amount:.2f}", f"{self.amount:.2f} EUR", f"{self.amount:g} dollars"])


# intent -> (templates, arguments). Templates are str.format'ed with the entities plus
# {reason_words}, {date}, {amount}; arguments are what the teacher calls with.
Intent = tuple[list[str], Callable[[_Entities, str], dict[str, Any]]]
INTENTS: dict[str, Intent] = {
    "get_order_status": ([
        "where is my order {order_id}?", "can you check the status of order {order_id}",
        "order {order_id} hasn't arrived yet, what's going on?", "any update on {order_id}?",
        "I'd like to know when {order_id} will be delivered", "tracking for order {order_id} please",
    ], lambda e, date: {"order_id": e.order_id}),
    "cancel_order": ([
        "please cancel order {order_id}", "I want to cancel {order_id}, it {reason_words}",
        "cancel my order {order_id} asap", "can I still cancel {order_id}? it {reason_words}",
    ], lambda e, date: {"order_id": e.order_id, "reason": e.reason}),
    "request_refund": ([
        "I want a refund of {amount} for order {order_id}, the item {reason_words}",
        "order {order_id} {reason_words}. please refund {amount}",
        "refund {amount} on {order_id} because it {reason_words}",
        "could I get my {amount} back for {order_id}? it {reason_words}",
    ], lambda e, date: {"order_id": e.order_id, "amount": e.amount, "reason": e.reason}),
    "start_return": ([
        "I'd like to return order {order_id}, it {reason_words}", "how do I send back {order_id}? it {reason_words}",
        "start a return for {order_id} please, the thing {reason_words}",
    ], lambda e, date: {"order_id": e.order_id, "reason": e.reason}),
    "update_shipping_address": ([
        "please ship order {order_id} to {street}, {postal_code} {city}, {country} instead",
        "I moved! new address for {order_id}: {street}, {city} {postal_code}, {country}",
        "change the delivery address of {order_id} to {street}, {postal_code} {city} ({country})",
    ], lambda e, date: {"order_id": e.order_id, "street": e.street, "city": e.city,
                        "postal_code": e.postal_code, "country": e.country}),
    "check_product_availability": ([
        "is the {product} in stock{size_text}?", "do you have the {product}{size_text} available?",
        "when will the {product}{size_text} be back in stock", "can I still buy the {product}{size_text}",
    ], lambda e, date: {"product": e.product, **({"size": e.size} if e.size else {})}),
    "escalate_to_human": ([
        "I want to talk to a real person about {order_id}", "this is useless, get me a human agent",
        "escalate this please, nobody has answered me about {order_id} for days",
        "can a manager call me back? it's about {order_id}",
    ], lambda e, date: {"reason": "customer asked for a human", "priority": "normal"}),
    "send_invoice": ([
        "send the invoice for {order_id} to {email}", "can I get the invoice of order {order_id} at {email}?",
        "please email me ({email}) the invoice for {order_id}",
    ], lambda e, date: {"order_id": e.order_id, "email": e.email}),
    "apply_discount_code": ([
        "apply code {code} to order {order_id}", "I forgot to use my discount {code} on {order_id}",
        "can you add the promo code {code} to {order_id}?",
    ], lambda e, date: {"order_id": e.order_id, "code": e.code}),
    "schedule_delivery": ([
        "can order {order_id} be delivered on {date}?", "please deliver {order_id} on {date}",
        "I'm home on {date}, schedule {order_id} for then",
    ], lambda e, date: {"order_id": e.order_id, "date": date}),
}
CHITCHAT = [("thanks, that's all", "You're welcome! Have a great day."),
            ("what are your opening hours?", "Our support team is available 24/7 in this chat."),
            ("do you ship to Canada?", "Yes, we ship to Canada; delivery takes 5-8 business days."),
            ("how long does shipping take?", "Standard shipping takes 2-4 business days in Europe and the US."),
            ("do you have a physical store?", "We are online only, but returns are free at any post office."),
            ("what payment methods do you accept?", "We accept cards, PayPal and bank transfer."),
            ("is there a student discount?", "Yes: students get 10% off with a verified student email."),
            ("how do I reset my password?", "Use 'Forgot password' on the sign-in page; the link is valid 1 hour."),
            ("can I change my order after paying?", "Yes, until it ships; tell me the order number and the change."),
            ("what is your return policy?", "You can return any item within 30 days for a full refund.")]
GREETINGS = ["", "", "hi, ", "hello! ", "hey there, ", "good morning, "]
CLOSINGS = ["", "", "", " thanks", " thank you!", " please", " thx", "!!"]
# Shares of records that curation must drop or fix.
SHARES = {"error": 0.03, "empty": 0.02, "repeat": 0.05, "thumbs_down": 0.03, "corrected": 0.01, "other_model": 0.03}


def _typo(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    i = rng.randrange(len(words))
    word = words[i]
    if len(word) > 3 and word.isalpha():
        j = rng.randrange(len(word) - 1)
        words[i] = word[:j] + word[j + 1] + word[j] + word[j + 2:]
    return " ".join(words)


def _user_text(intent: str, entities: _Entities, date: str, rng: random.Random) -> str:
    template = rng.choice(INTENTS[intent][0])
    text = template.format(
        order_id=entities.order_id if rng.random() < 0.85 else entities.order_id.removeprefix("ORD-"),
        reason_words=rng.choice(REASON_WORDS[entities.reason]), amount=entities.amount_text(rng), date=date,
        product=entities.product, size_text=f" in size {entities.size}" if entities.size else "",
        street=entities.street, city=entities.city, postal_code=entities.postal_code, country=entities.country,
        email=entities.email, code=entities.code)
    text = rng.choice(GREETINGS) + text + rng.choice(CLOSINGS)
    roll = rng.random()
    if roll < 0.15:
        text = _typo(text, rng)
    elif roll < 0.20:
        text = text.upper()
    elif roll < 0.45:
        text = text[0].upper() + text[1:]
    return text


def _conversation(intent: str, entities: _Entities, date: str, rng: random.Random) -> list[dict[str, Any]]:
    messages = [{"role": "system", "content": SYSTEM}]
    if intent != "escalate_to_human" and "order_id" in INTENTS[intent][1](entities, date) and rng.random() < 0.15:
        messages += [{"role": "user", "content": rng.choice(["I have a problem with my order", "hi, I need help"])},
                     {"role": "assistant", "content": "Sure, I can help. What is your order number?"}]
    messages.append({"role": "user", "content": _user_text(intent, entities, date, rng)})
    return messages


URGENT = ("useless", "days", "asap", "manager")


def _arguments(intent: str, entities: _Entities, date: str, text: str) -> dict[str, Any]:
    """What the teacher calls with: only what the conversation says (a model can learn it)."""
    arguments = INTENTS[intent][1](entities, date)
    lowered = text.lower()
    if intent == "cancel_order" and not any(words in lowered for words in REASON_WORDS[entities.reason]):
        del arguments["reason"]  # optional, and the customer gave none
    if intent == "escalate_to_human":
        arguments["priority"] = "high" if any(word in lowered for word in URGENT) else "normal"
    return arguments


def _tool_call(name: str, arguments: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    as_object = rng.random() < 0.5  # both forms occur in real logs
    return {"id": f"call_{rng.getrandbits(48):012x}", "type": "function",
            "function": {"name": name, "arguments": arguments if as_object else json.dumps(arguments)}}


def _record(i: int, rng: random.Random) -> dict[str, Any]:
    timestamp = START + i * 37 + rng.randint(0, 30)
    if rng.random() < 0.06:
        user, answer = rng.choice(CHITCHAT)
        user = rng.choice(GREETINGS) + user + rng.choice(CLOSINGS)
        if rng.random() < 0.2:
            user = _typo(user, rng)
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
        message = {"role": "assistant", "content": answer}
    else:
        intent = rng.choice(list(INTENTS))
        entities = _Entities(rng)
        date = entities.date_text(rng)
        messages = _conversation(intent, entities, date, rng)
        message = {"role": "assistant", "content": "",
                   "tool_calls": [_tool_call(intent, _arguments(intent, entities, date, messages[-1]["content"]), rng)]}
    prompt_tokens = sum(len(str(m["content"])) for m in messages) // 4 + 900  # the tool schemas
    return {
        "request": {"model": TEACHER, "messages": messages, "tools": TOOLS, "temperature": 0},
        "response": {"id": f"chatcmpl-{i:08d}", "object": "chat.completion", "created": timestamp, "model": TEACHER,
                     "choices": [{"index": 0, "message": message,
                                  "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}],
                     "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 30,
                               "total_tokens": prompt_tokens + 30}},
        "workload_id": WORKLOAD_ID, "client_id": f"web-{rng.randint(1, 12)}", "timestamp": timestamp,
    }


def _spoil(record: dict[str, Any], kind: str, rng: random.Random) -> dict[str, Any]:
    """Make `record` one that curation has to drop (or, for `corrected`, fix)."""
    message = record["response"]["choices"][0]["message"]
    if kind == "error":
        return {**record, "response": None, "status": "error", "error": "upstream timeout after 30 s"}
    if kind == "empty":
        record["response"]["choices"][0]["message"] = {"role": "assistant", "content": ""}
    elif kind == "other_model":
        record["request"]["model"] = record["response"]["model"] = OTHER_MODEL
    elif kind in ("thumbs_down", "corrected") and message.get("tool_calls"):
        wrong = rng.choice([name for name in TOOL_NAMES if name != message["tool_calls"][0]["function"]["name"]])
        record["response"]["choices"][0]["message"] = {
            "role": "assistant", "content": "", "tool_calls": [_tool_call(wrong, {"order_id": "unknown"}, rng)]}
        feedback: dict[str, Any] = {"rating": -1, "comment": "wrong action", "timestamp": record["timestamp"] + 60}
        if kind == "corrected":
            feedback["correction"] = message
        record["feedback"] = [feedback]
    return record


def generate(n: int, seed: int = 0) -> Iterator[dict[str, Any]]:
    """`n` records in blueprint shape, oldest first."""
    rng = random.Random(seed)
    history: list[dict[str, Any]] = []
    for i in range(n):
        roll, kind = rng.random(), None
        for name, share in SHARES.items():
            if roll < share:
                kind = name
                break
            roll -= share
        if kind == "repeat" and history:  # the same request again, later, maybe another client
            earlier = rng.choice(history)
            record = json.loads(json.dumps(earlier))
            record["timestamp"] = START + i * 37
            record["response"]["id"] = f"chatcmpl-{i:08d}"
            record["client_id"] = f"web-{rng.randint(1, 12)}"
        else:
            record = _record(i, rng)
            if kind in ("error", "empty", "thumbs_down", "corrected", "other_model"):
                record = _spoil(record, kind, rng)
            elif len(history) < 5_000:
                history.append(record)
        yield record
