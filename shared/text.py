"""Wire strings as text: one printable, single-line, injective representation.

Every string a FlowTarget service decodes from the wire (DNS names, HTTP
request lines and headers, certificate names, SSH banners ...) is carried in
events, and stored, as *represented text*:

============================  =========================================
original                      represented text
============================  =========================================
valid, printable UTF-8        unchanged (any language)
``\\`` (backslash)             ``\\\\`` (doubled)
C0 control, DEL (U+0000-1F,   ``\\xNN`` (``\\x0a`` for a newline)
U+007F)
C1 control, U+2028, U+2029    ``\\uNNNN``
a byte that is not valid      ``\\xNN`` with NN >= 80
UTF-8
============================  =========================================

The mapping is injective: ``unrepresent(text)`` gives the original string back
(undecodable bytes as ``surrogateescape`` surrogates), so
``wire_bytes(text)`` is exactly the original bytes.  Represented text holds
no control character, no surrogate and no line separator, so it cannot start
a new log line, line-protocol line or JSON record.

``needs_repr`` tells whether a string still holds a character represented
text never holds; the store applies ``represent`` to such strings only (a
producer that did not represent them), so every stored string is represented
text, read back with ``unrepresent``.
"""

from __future__ import annotations

import re

_NEEDS_REPR = re.compile("[\\\\\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
#: characters represented text never holds (everything ``represent`` escapes but the backslash)
RAW_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _repr_char(m: re.Match[str]) -> str:
    c = m.group()
    o = ord(c)
    if c == "\\":
        return "\\\\"
    if o < 0x20 or o == 0x7F:
        return f"\\x{o:02x}"
    if 0xDC80 <= o <= 0xDCFF:  # an undecodable byte under surrogateescape
        return f"\\x{o - 0xDC00:02x}"
    return f"\\u{o:04x}"


def represent(value: str | bytes | bytearray) -> str:
    """Printable, single-line, injective text for any wire string (see module doc).

    Bytes are decoded as UTF-8; bytes that are not valid UTF-8 become ``\\xNN``.
    """
    if not isinstance(value, str):
        value = bytes(value).decode("utf-8", "surrogateescape")
    if _NEEDS_REPR.search(value) is None:
        return value
    return _NEEDS_REPR.sub(_repr_char, value)


def needs_repr(value: str) -> bool:
    """True when ``value`` holds a character that represented text never holds."""
    return RAW_CHARS.search(value) is not None


def as_represented(value: str) -> str:
    """``value`` if it is already represented text, else ``represent(value)``."""
    return represent(value) if RAW_CHARS.search(value) is not None else value


_UNREPR = re.compile(r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4})")


def _unrepr_char(m: re.Match[str]) -> str:
    s = m.group(1)
    if s == "\\":
        return "\\"
    n = int(s[1:], 16)
    if s[0] == "x" and n >= 0x80:
        return chr(0xDC00 + n)
    return chr(n)


def unrepresent(text: str) -> str:
    """The original string of ``represent`` (undecodable bytes as surrogateescape surrogates)."""
    if "\\" not in text:
        return text
    return _UNREPR.sub(_unrepr_char, text)


def wire_bytes(text: str) -> bytes:
    """The original bytes of represented text."""
    return unrepresent(text).encode("utf-8", "surrogateescape")


_PARTIAL_ESCAPE = re.compile(r"\\(x[0-9a-f]?|u[0-9a-f]{0,3})?$")


def truncate(text: str, limit: int) -> str:
    """Represented text cut to at most ``limit`` characters without cutting an escape in half."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    m = _PARTIAL_ESCAPE.search(cut)
    if m is not None:
        # a trailing backslash run: an odd count means the last one starts an escape
        k = m.start()
        run = len(cut[:k]) - len(cut[:k].rstrip("\\"))
        if run % 2 == 0:
            cut = cut[:k]
    return cut


def wire_text(value: bytes | bytearray, limit: int = 0) -> str:
    """Represented text of wire bytes, cut to ``limit`` characters when given."""
    t = represent(value)
    return truncate(t, limit) if limit else t
