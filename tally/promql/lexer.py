"""PromQL tokens: numbers, durations, identifiers, strings, operators and keywords.

Pure; raises :class:`tally.promql.errors.PromQLSyntaxError` with the position of the
offending character.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tally.promql.errors import PromQLSyntaxError

__all__ = ["Token", "tokenize", "parse_duration_ms", "KEYWORDS"]

KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
                      "and", "or", "unless", "atan2"})

_DURATION_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
                      "w": 7 * 86_400_000, "y": 365 * 86_400_000}
_DURATION_RE = re.compile(r"(?:[0-9]+(?:ms|s|m|h|d|w|y))+")
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h|d|w|y)")
_NUMBER_RE = re.compile(
    r"0[xX][0-9a-fA-F]+|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_IDENT_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# Longest first so that "==" is not read as "=" "=".
_OPERATORS = ("==", "!=", ">=", "<=", "=~", "!~", "+", "-", "*", "/", "%", "^", ">", "<", "=",
              ",", "(", ")", "{", "}", "[", "]", ":", "@")


@dataclass(frozen=True)
class Token:
    """One token: ``kind`` is NUMBER, DURATION, IDENT, STRING, OP, KEYWORD or EOF."""

    kind: str
    text: str
    pos: int
    value: object = None


def parse_duration_ms(text: str) -> int:
    """``5m``, ``1h30m``, ``500ms`` → milliseconds; PromQLSyntaxError otherwise."""
    if not _DURATION_RE.fullmatch(text):
        raise PromQLSyntaxError(f"bad duration {text!r}")
    total = sum(int(n) * _DURATION_UNITS_MS[u] for n, u in _DURATION_PART.findall(text))
    if total <= 0:
        raise PromQLSyntaxError(f"duration must be positive, got {text!r}")
    return total


def _unquote(text: str, pos: int) -> str:
    quote, body = text[0], text[1:-1]
    if quote == "`":
        return body
    out, i = [], 0
    simple = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "a": "\a", "b": "\b",
              "f": "\f", "v": "\v"}
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1:i + 2]
        if nxt in simple:
            out.append(simple[nxt])
            i += 2
        elif nxt in ("u", "U", "x"):
            width = {"u": 4, "U": 8, "x": 2}[nxt]
            digits = body[i + 2:i + 2 + width]
            if len(digits) != width or not re.fullmatch(r"[0-9a-fA-F]+", digits):
                raise PromQLSyntaxError(f"bad escape \\{nxt} in string at position {pos}")
            out.append(chr(int(digits, 16)))
            i += 2 + width
        else:
            raise PromQLSyntaxError(f"unknown escape sequence \\{nxt} in string at position {pos}")
    return "".join(out)


def tokenize(src: str) -> list[Token]:
    """Split a PromQL expression into tokens (comments and whitespace skipped)."""
    tokens: list[Token] = []
    i, n = 0, len(src)
    while i < n:
        ch = src[i]
        if ch.isspace():
            i += 1
            continue
        if ch == "#":  # comment to end of line
            end = src.find("\n", i)
            i = n if end < 0 else end
            continue
        if ch in "\"'`":
            j = i + 1
            while j < n and src[j] != ch:
                j += 2 if src[j] == "\\" and ch != "`" else 1
            if j >= n:
                raise PromQLSyntaxError(f"unterminated string starting at position {i}")
            tokens.append(Token("STRING", src[i:j + 1], i, _unquote(src[i:j + 1], i)))
            i = j + 1
            continue
        if ch.isdigit() or (ch == "." and i + 1 < n and src[i + 1].isdigit()):
            dur = _DURATION_RE.match(src, i)
            num = _NUMBER_RE.match(src, i)
            # A duration wins when it is at least as long ("5m" and not "5"), but not "5e3".
            if dur and (not num or dur.end() >= num.end()) and not (
                    dur.end() < n and (src[dur.end()].isalnum() or src[dur.end()] == "_")):
                tokens.append(Token("DURATION", dur.group(), i, parse_duration_ms(dur.group())))
                i = dur.end()
                continue
            text = num.group()
            if num.end() < n and (src[num.end()].isalpha() or src[num.end()] == "_"):
                bad = re.match(r"[0-9a-zA-Z_.]+", src[i:]).group()
                raise PromQLSyntaxError(f"bad number or duration {bad!r} at position {i}")
            value = float(int(text, 16)) if text[:2].lower() == "0x" else float(text)
            tokens.append(Token("NUMBER", text, i, value))
            i = num.end()
            continue
        m = _IDENT_RE.match(src, i)
        if m:
            word = m.group()
            low = word.lower()
            if low in ("inf", "nan"):
                tokens.append(Token("NUMBER", word, i, float(low)))
            elif low in KEYWORDS:
                tokens.append(Token("KEYWORD", low, i))
            else:
                tokens.append(Token("IDENT", word, i))
            i = m.end()
            continue
        for op in _OPERATORS:
            if src.startswith(op, i):
                tokens.append(Token("OP", op, i))
                i += len(op)
                break
        else:
            raise PromQLSyntaxError(f"unexpected character {ch!r} at position {i}")
    tokens.append(Token("EOF", "", n))
    return tokens
