"""SSH (RFC 4253): identification banners and HASSH from the KEXINIT messages.

HASSH (Salesforce): MD5 of ``kex;ciphers;macs;compression`` of the client's
KEXINIT (client-to-server lists); HASSHServer the same from the server's
KEXINIT (server-to-client lists).
"""

from __future__ import annotations

import hashlib

from services.classify.dissectors.base import Dissector, Match
from shared.models import FlowSample, SshInfo, Verdict
from shared.text import wire_text


def _banner(data: bytes) -> tuple[str, int] | None:
    if not data.startswith(b"SSH-"):
        return None
    eol = data.find(b"\n")
    if eol < 0:
        line = data[:255]
        end = len(data)
    else:
        line = data[:eol]
        end = eol + 1
    return wire_text(line.rstrip(b"\r"), 255), end


def _namelists(payload: bytes) -> list[str] | None:
    """The 10 name-lists of a KEXINIT payload (after the message code and cookie)."""
    pos = 17
    out = []
    for _ in range(10):
        if pos + 4 > len(payload):
            return None
        n = int.from_bytes(payload[pos:pos + 4], "big")
        pos += 4
        if pos + n > len(payload):
            return None
        out.append(payload[pos:pos + n].decode("latin-1"))
        pos += n
    return out


def _kexinit(data: bytes, start: int) -> list[str] | None:
    """Find the first binary packet after the banner and parse it if it is KEXINIT (code 20)."""
    pos = start
    # skip any further text lines (servers may send lines before the banner is complete)
    if pos + 6 > len(data):
        return None
    plen = int.from_bytes(data[pos:pos + 4], "big")
    padlen = data[pos + 4]
    if plen < 16 or plen > 35000 or data[pos + 5] != 20:
        return None
    payload = data[pos + 5:pos + 4 + plen - padlen]
    return _namelists(payload)


def hassh(lists: list[str], client: bool) -> str:
    if client:
        s = ";".join((lists[0], lists[2], lists[4], lists[6]))
    else:
        s = ";".join((lists[0], lists[3], lists[5], lists[7]))
    return hashlib.md5(s.encode("latin-1")).hexdigest()


class SshDissector(Dissector):
    name = "SSH"
    transports = frozenset({"TCP"})
    ports = frozenset({22})

    def could_be(self, s: FlowSample) -> bool:
        p = s.src_payloads
        if p and p[0][:4] == b"SSH-":
            return True
        p = s.dst_payloads
        return bool(p and p[0][:4] == b"SSH-")

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        a = b"".join(s.src_payloads)
        b = b"".join(s.dst_payloads)
        ba, bb = _banner(a), _banner(b)
        if ba is None and bb is None:
            return Match.NO
        # the client is the side that opened the connection; servers usually speak first,
        # so we cannot tell from order alone: the side on the well-known port is the server
        client_is_src = not (s.src_port == 22 and s.dst_port != 22)
        cb, sb = (ba, bb) if client_is_src else (bb, ba)
        cdata, sdata = (a, b) if client_is_src else (b, a)
        info = SshInfo()
        if cb:
            info.client_banner = cb[0]
            k = _kexinit(cdata, cb[1])
            if k:
                info.hassh_client = hassh(k, True)
        if sb:
            info.server_banner = sb[0]
            k = _kexinit(sdata, sb[1])
            if k:
                info.hassh_server = hassh(k, False)
        v.app_protocol = "SSH"
        v.ssh = info
        # nDPI reports the first banner seen on the wire as the flow's host
        first_src = not s.payload_dirs.startswith("d")
        first = (ba if first_src else bb) or ba or bb
        v.host = first[0] if first else ""
        if info.hassh_client and info.hassh_server:
            return Match.FINAL
        return Match.PARTIAL
