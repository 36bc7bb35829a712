"""The name a TCP client asks for, straight from a flow sample's first bytes.

block acts on classify's verdicts, but for rules that only need the name
(HTTP Host, TLS SNI) and addresses it can act one NATS hop and one classify
pass earlier, on capture's FlowSample itself.  This module extracts just that
name, defensively: anything malformed gives ``None``.
"""

from __future__ import annotations

_METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE ")


def http_host(data: bytes) -> str | None:
    """The Host header of an HTTP/1.x request at the start of ``data``."""
    if not data.startswith(_METHODS):
        return None
    end = data.find(b"\r\n\r\n")
    head = data[: end if end >= 0 else 8192]
    for line in head.split(b"\r\n")[1:]:
        if line[:5].lower() == b"host:":
            host = line[5:].strip()
            try:
                text = host.decode("ascii")
            except UnicodeDecodeError:
                return None
            return text if text and text.isprintable() and " " not in text else None
    return None


def tls_sni(data: bytes) -> str | None:
    """The server_name of a TLS ClientHello at the start of ``data`` (records reassembled)."""
    try:
        if len(data) < 5 or data[0] != 0x16 or data[1] != 0x03:
            return None
        # join the handshake records' payloads
        hs = bytearray()
        o = 0
        while o + 5 <= len(data) and data[o] == 0x16 and len(hs) < 16384:
            n = int.from_bytes(data[o + 3:o + 5], "big")
            hs += data[o + 5:o + 5 + n]
            o += 5 + n
        if len(hs) < 4 or hs[0] != 0x01:
            return None
        body_len = int.from_bytes(hs[1:4], "big")
        b = bytes(hs[4:4 + body_len])
        p = 2 + 32  # version, random
        p += 1 + b[p]  # session id
        p += 2 + int.from_bytes(b[p:p + 2], "big")  # cipher suites
        p += 1 + b[p]  # compression methods
        if p + 2 > len(b):
            return None
        end = min(len(b), p + 2 + int.from_bytes(b[p:p + 2], "big"))
        p += 2
        while p + 4 <= end:
            etype = int.from_bytes(b[p:p + 2], "big")
            elen = int.from_bytes(b[p + 2:p + 4], "big")
            ext = b[p + 4:p + 4 + elen]
            p += 4 + elen
            if etype != 0:
                continue
            q = 2  # server_name_list length
            while q + 3 <= len(ext):
                ntype, nlen = ext[q], int.from_bytes(ext[q + 1:q + 3], "big")
                name = ext[q + 3:q + 3 + nlen]
                q += 3 + nlen
                if ntype == 0 and name:
                    text = name.decode("ascii")
                    return text if text.isprintable() and " " not in text else None
            return None
    except (IndexError, UnicodeDecodeError, ValueError):
        return None
    return None


def client_name(first_bytes: bytes) -> tuple[str, str] | None:
    """(app_protocol, name) from a TCP client's first bytes: ("HTTP", Host) or ("TLS", SNI)."""
    h = http_host(first_bytes)
    if h:
        return "HTTP", h
    s = tls_sni(first_bytes)
    if s:
        return "TLS", s
    return None
