"""File names as data: stored losslessly and uniquely, shown without being interpreted.

Storage (`encode_path` / `decode_path`): a path's bytes become text the way ``ls -b`` shows them:
every backslash doubled, every byte that is not part of valid UTF-8 written ``\\xNN``, everything else
as is. The mapping is injective, so two different files can never share a stored path (a name that
is not UTF-8, ``x\\xe9.jpg``, and a file literally called ``x\\xe9.jpg`` stay two images), and
`decode_path` gives back the exact bytes to open.

Display (`shown`): control characters (C0, DEL, C1) and the bidirectional overrides are written as
escapes, so a name (or a label, or an error) can neither move the terminal's cursor nor reorder
what is printed around it. Markup is the renderer's business: Rich `Text` and Jinja's autoescape.
"""

from __future__ import annotations

import os
import re

_ESCAPED = re.compile(r"\\(\\|x[0-9a-f]{2})")
# C0 controls, DEL, C1 controls, and the bidirectional embedding/override/isolate marks.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def encode_path(path: str | bytes) -> str:
    """The stored text of a file name (``os.scandir`` gives undecodable bytes as surrogates)."""
    raw = path if isinstance(path, bytes) else os.fsencode(path)
    return raw.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


def decode_path(text: str) -> bytes:
    """The exact bytes of a stored file name: the inverse of `encode_path`."""
    out = bytearray()
    pos = 0
    for match in _ESCAPED.finditer(text):
        out += text[pos : match.start()].encode("utf-8", "surrogateescape")
        token = match.group(1)
        out += b"\\" if token == "\\" else bytes([int(token[1:], 16)])
        pos = match.end()
    out += text[pos:].encode("utf-8", "surrogateescape")
    return bytes(out)


def open_path(text: str) -> str:
    """The name to hand to `open` for a stored path (undecodable bytes as surrogates, as os does)."""
    return os.fsdecode(decode_path(text))


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(text: object, keep_newlines: bool = False) -> str:
    """`text` as it may be printed: control characters escaped (``\\x1b``, ``\\n``, ``\\u202e``)."""
    value = "" if text is None else str(text)
    if keep_newlines:
        return "\n".join(_CONTROL.sub(_escape, line) for line in value.split("\n"))
    return _CONTROL.sub(_escape, value)


def plural(n: int, word: str) -> str:
    """``word`` for one, ``word + "s"`` otherwise: "1 image", "2 images"."""
    return word if n == 1 else f"{word}s"


def counted(n: int, word: str) -> str:
    """``n`` and ``word`` agreeing: "1 image", "0 images"."""
    return f"{n} {plural(n, word)}"
