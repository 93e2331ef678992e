"""PII redaction on a seeded corpus: recall >= 99% per kind, and the entities a support
workload needs (order ids, amounts, dates, postal codes, product sizes) left intact."""

import random
import string
from collections import Counter

import pytest

from flywheel.pii import Redactor, iban_valid, luhn_valid


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    return next(body + d for d in string.digits if luhn_valid(body + d))


def _iban(country: str, bban: str) -> str:
    check = 98 - int("".join(str(int(c, 36)) for c in bban + country + "00")) % 97
    return f"{country}{check:02d}{bban}"


def _digits(rng, n):
    return "".join(rng.choice(string.digits) for _ in range(n))


def _grouped(value: str, sep: str) -> str:
    return sep.join(value[i:i + 4] for i in range(0, len(value), 4))


def corpus(n: int, seed: int = 7) -> list[tuple[str, str, str]]:
    """(kind, value, sentence) triples in the formats people type."""
    rng = random.Random(seed)

    def email():
        return (f"{rng.choice(['anna', 'b.smith', 'dev+shop', 'x_y'])}{rng.randint(1, 999)}@"
                f"{rng.choice(['example.com', 'mail.co.uk', 'sub.domain.org'])}")

    def phone():
        d = lambda k: _digits(rng, k)
        return rng.choice([f"+1 {d(3)} {d(3)} {d(4)}", f"+44 20 {d(4)} {d(4)}", f"+49 30 {d(7)}",
                           f"({d(3)}) {d(3)}-{d(4)}", f"{d(3)}-{d(3)}-{d(4)}", f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}",
                           f"030 {d(4)} {d(4)}", f"+1-{d(3)}-{d(3)}-{d(4)}"])

    def card():
        number = _luhn_complete(rng.choice(["4", "51", "37", "6011"]), rng.choice([15, 16]), rng)
        return rng.choice([number, _grouped(number, " "), _grouped(number, "-")])

    def iban():
        value = rng.choice([_iban("DE", _digits(rng, 18)), _iban("GB", "WEST" + _digits(rng, 14)),
                            _iban("FR", _digits(rng, 23))])
        return rng.choice([value, _grouped(value, " ")])

    def ip():
        return rng.choice([".".join(str(rng.randint(1, 254)) for _ in range(4)),
                           ":".join(f"{rng.randint(0, 65535):x}" for _ in range(8))])

    makers = {"EMAIL": email, "PHONE": phone, "CARD": card, "IBAN": iban, "IP": ip}
    frames = ["my {} is {}", "{} : {}", "contact me: {} {}", "({} {})", "Please use {} {}."]
    rows = []
    for kind, make in makers.items():
        for _ in range(n):
            value = make()
            rows.append((kind, value, rng.choice(frames).format(rng.choice(["details", "info", "it"]), value)))
    return rows


def test_recall_is_at_least_99_percent_per_kind():
    redactor = Redactor()
    found = Counter()
    for kind, value, sentence in corpus(400):
        counts = Counter()
        redacted = redactor.redact(sentence, counts)
        if value not in redacted and f"<{kind}>" in redacted:
            found[kind] += 1
    for kind in ("EMAIL", "PHONE", "CARD", "IBAN", "IP"):
        assert found[kind] / 400 >= 0.99, (kind, found[kind])


@pytest.mark.parametrize("text", [
    "where is order ORD-482913?", "refund $1,234.56 please", "refund 42.50 EUR on 482913", "deliver on 2026-03-15",
    "ship to 4000-123 Porto", "Leeds LS1 4AP", "size 9.5 please", "version 3.12.1", "call at 10:30",
    "order 1234567", "card ending 4242", "invoice 2026/0042",
])
def test_business_entities_are_left_intact(text):
    counts = Counter()
    assert Redactor().redact(text, counts) == text and not counts


def test_checksums_reject_lookalikes_and_custom_patterns_apply():
    assert not luhn_valid("4111111111111112") and luhn_valid("4111111111111111")
    assert iban_valid("GB82 WEST 1234 5698 7654 32") and not iban_valid("GB82 WEST 1234 5698 7654 33")
    counts = Counter()
    text = Redactor({"customer_id": r"CUST-\d{6}"}).redact("I am CUST-123456, card 4111 1111 1111 1112", counts)
    assert text == "I am <CUSTOMER_ID>, card 4111 1111 1111 1112" and counts == {"CUSTOMER_ID": 1}
