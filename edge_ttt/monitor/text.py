"""Text from the fleet (device ids, channel names: whatever an agent's topic level or summary
held) as the commands show it to a person. The data keeps it as written; only what is shown
changes: a newline in an id split one alert into several lines of tab-separated output, an id of
'' or ' ' read as a blank row, and a right-to-left override showed an id reversed."""

from __future__ import annotations

import unicodedata

SHOWN_ID = 48  # characters of a device id on the page; a longer one keeps its two ends
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
# bidirectional controls: they reorder the text around them (a "Cf" category shared with harmless
# characters such as the zero-width joiner, so named one by one)
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _escaped(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    if char in _BIDI or unicodedata.category(char) in ("Cc", "Zl", "Zp"):
        return f"\\u{ord(char):04x}" if ord(char) > 0xFF else f"\\x{ord(char):02x}"
    return char


def visible(text: str) -> str:
    """`text` with control and bidirectional-control characters written as escapes, and an empty
    or blank one named.

    >>> visible("a\\nb\\tc"), visible("evil\\u202etxt.exe"), visible("a$\\\\frac")
    ('a\\\\nb\\\\tc', 'evil\\\\u202etxt.exe', 'a$\\\\frac')
    >>> visible(""), visible("  ")
    ("(empty: '')", "(blank: '  ')")
    """
    if not text.strip():
        return f"(empty: {text!r})" if not text else f"(blank: {text!r})"
    if text.isprintable() and not _BIDI.intersection(text):
        return text
    return "".join(_escaped(c) for c in text)


def shown_id(device: str) -> str:
    """A device id (or a channel name) as the page shows it in tables and figures: `visible`, whole
    up to `SHOWN_ID` characters, else its first 32 and last 12 around an ellipsis, so that one long
    id cannot push every other column off the page (the alerts list and `monitor query` keep it
    whole).

    >>> shown_id("watch-s06-left")
    'watch-s06-left'
    >>> shown_id("d" * 40 + "0123456789abcdef")
    'dddddddddddddddddddddddddddddddd…456789abcdef'
    """
    device = visible(device)
    return device if len(device) <= SHOWN_ID else f"{device[:32]}…{device[-12:]}"
