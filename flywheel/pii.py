"""Personal data out of training text: emails, phone numbers, card numbers, IBANs, IP
addresses, and custom patterns, each replaced by a typed placeholder (`<EMAIL>`...).

Numbers are redacted only when they are what they look like: card numbers must pass the
Luhn check and IBANs the ISO 7064 mod-97 check, and phone numbers need a phone's shape
(a `+` country code, or digit groups split by separators), so order ids (`ORD-482913`),
amounts (`$1,234.56`), dates and postal codes stay as they are.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping
from functools import lru_cache

EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])")
IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\w|\.\d)")
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])"
                  r"|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){1,6}(?::[0-9A-Fa-f]{1,4}){1,6}(?![\w:])")
PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"  # +49 30 1234567
    r"|\(\d{2,4}\)[ .-]?\d{3,4}[ .-]?\d{3,4}"  # (555) 123-4567
    r"|\d{3}[.-]\d{3}[.-]\d{4}"  # 555-123-4567
    r"|0\d{2,4}[ /-]\d{3,4}[ -]?\d{2,4})(?![\w-])"  # 030 1234 5678
)


def luhn_valid(digits: str) -> bool:
    total, double = 0, False
    for char in reversed(digits):
        value = int(char) * (2 if double else 1)
        total += value - 9 if value > 9 else value
        double = not double
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    compact = text.replace(" ", "")
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _checked(kind: str, valid: Callable[[str], bool]) -> Callable[[re.Match, Counter], str]:
    def replace(match: re.Match, counts: Counter) -> str:
        if not valid(match.group()):
            return match.group()
        counts[kind] += 1
        return f"<{kind}>"
    return replace


DIGIT = re.compile(r"\d")


def _always(_: str) -> bool:
    return True


def _has_digit(text: str) -> bool:
    return DIGIT.search(text) is not None


class Redactor:
    """`redact(text, counts)` returns the text with placeholders and adds what it replaced to
    `counts` (kind -> n). Order matters: IBANs before cards (an IBAN's digits can pass the
    Luhn check), both before phones, which would otherwise claim their digit groups.

    Each built-in rule runs only on text that could hold a match (an `@`, a digit, a `:`),
    and results are cached per text, so a system prompt repeated in every record is
    redacted once: most of curation's per-record cost was these regexes."""

    def __init__(self, custom_patterns: Mapping[str, str] | None = None):
        self._rules: list[tuple[Callable[[str], bool], re.Pattern, Callable[[re.Match, Counter], str]]] = [
            (lambda text: "@" in text, EMAIL, _checked("EMAIL", _always)),
            (_has_digit, IBAN, _checked("IBAN", iban_valid)),
            (_has_digit, CARD, _checked("CARD", lambda text: luhn_valid(re.sub(r"\D", "", text)))),
            (_has_digit, IPV4, _checked("IP", _always)),
            (lambda text: ":" in text, IPV6, _checked("IP", _always)),
            (_has_digit, PHONE, _checked("PHONE", lambda text: 7 <= len(re.sub(r"\D", "", text)) <= 15)),
        ]
        for name, pattern in (custom_patterns or {}).items():
            self._rules.append((_always, re.compile(pattern), _checked(name.upper(), _always)))
        self._cached = lru_cache(maxsize=4096)(self._redact)

    def redact(self, text: str, counts: Counter) -> str:
        redacted, found = self._cached(text)
        counts.update(found)
        return redacted

    def _redact(self, text: str) -> tuple[str, Counter]:
        found: Counter = Counter()
        for applies, pattern, replace in self._rules:
            if applies(text):
                text = pattern.sub(lambda match, replace=replace: replace(match, found), text)
        return text, found
