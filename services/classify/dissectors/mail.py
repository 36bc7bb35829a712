"""Mail and file transfer control channels: SMTP (RFC 5321, STARTTLS RFC 3207),
POP3 (RFC 1939, STLS RFC 2595), IMAP (RFC 9051, STARTTLS), FTP control
(RFC 959, AUTH TLS RFC 4217) and FTP data listings.

A session that upgrades with STARTTLS/STLS is reported as nDPI does:
SMTPS, POPS, IMAPS.  The commands seen are kept in ``verdict.extra``.
"""

from __future__ import annotations

from shared.models import FlowSample, Verdict
from services.classify.dissectors.base import Dissector, Match
from services.classify.dissectors.breadth_util import TCP, PortHint, ordered, printable
from services.classify.dissectors.db import resp_start

_SMTP_CMDS = (b"EHLO ", b"HELO ", b"MAIL FROM:", b"RCPT TO:", b"STARTTLS", b"AUTH ", b"DATA\r\n", b"QUIT\r\n")
_POP_CMDS = (b"USER ", b"PASS ", b"STAT", b"LIST", b"RETR ", b"DELE ", b"UIDL", b"TOP ", b"CAPA", b"STLS", b"APOP ", b"AUTH")
_FTP_CMDS = (b"USER ", b"PASS ", b"SYST", b"FEAT", b"PWD", b"CWD ", b"TYPE ", b"PASV", b"EPSV", b"PORT ", b"EPRT ",
             b"LIST", b"NLST", b"RETR ", b"STOR ", b"AUTH TLS", b"AUTH SSL", b"OPTS ", b"MLSD", b"SIZE ", b"MDTM ", b"QUIT")
_SMTP_PORTS = {25, 587, 2525, 465}
_POP_PORTS = {110, 995}
_IMAP_PORTS = {143, 993}
_FTP_PORTS = {21, 990, 2121}
#: what Mail.dissect decides on without the ports: a server's first bytes (after its swap) ...
_DECIDING_GREETINGS = (b"220 ", b"220-", b"+OK", b"* OK", b"* PREAUTH", b"* BYE")
#: ... and the ports whose branches read the client's commands
_CMD_PORTS = _POP_PORTS | _IMAP_PORTS | _FTP_PORTS


def _lines(b: bytes, limit: int = 12) -> list[bytes]:
    return b[:4096].split(b"\r\n")[:limit]


def _cmd(line: bytes) -> str:
    word = line.split(b" ", 1)[0][:16]
    return printable(word, 16).upper()


def greeting_host(payloads: list[bytes]) -> str:
    """The host nDPI reads from a "220" greeting (RFC 5321 4.2: "220 <domain> <text>"; FTP's
    RFC 959 220 reply has the same form): on each 220 line in turn, the text from its fifth
    character up to the next space, when something follows that space on the line, with
    trailing spaces dropped; the first line that gives a name wins.  A line whose fifth character
    is "(" gives none, nor does a greeting that is a single word ("220 host").  Lower case,
    non-printable characters as "?", at most nDPI's 79 characters (the last ones)."""
    for p in payloads[:8]:
        if b"220" not in p:
            continue
        for line in p.split(b"\n"):
            line = line.rstrip(b"\r")
            if len(line) <= 4 or line[:3] != b"220" or line[4:5] == b"(":
                continue
            sp = line.find(b" ", 5)
            if sp < 0 or sp + 1 >= len(line):
                continue
            name = line[4:sp].rstrip(b" ")[-79:]
            if name:
                return "".join(chr(c) if 32 <= c < 127 else "?" for c in name).lower()
    return ""


class Mail(Dissector):
    """SMTP, POP3, IMAP and FTP control: decided from the server greeting and the client's commands."""

    name = "SMTP"
    transports = TCP
    ports = frozenset()     # port guesses come from the PortHint entries below

    def could_be(self, s: FlowSample) -> bool:
        for p in (s.dst_payloads[0] if s.dst_payloads else b"", s.src_payloads[0] if s.src_payloads else b""):
            if p[:1] in (b"2", b"+", b"*", b"-") or p[:1].isalpha() and p[:1].isupper() or p[:1].isalnum():
                return True
        return False

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        server = b"".join(s.dst_payloads[:6])[:4096]
        client = b"".join(s.src_payloads[:6])[:4096]
        # the first sender is normally the client; greeting-first captures may be reversed
        server_payloads = s.dst_payloads
        if client.startswith((b"220", b"+OK", b"* OK", b"* PREAUTH")) and not server.startswith((b"220", b"+OK", b"* OK")):
            server, client = client, server
            server_payloads = s.src_payloads
        ports = {s.src_port, s.dst_port}
        if not (server.startswith(_DECIDING_GREETINGS) or client.startswith((b"EHLO ", b"HELO "))
                or ports & _CMD_PORTS):
            return Match.NO      # none of the branches below can decide: not worth splitting the lines
        cl = _lines(client)
        sl = _lines(server)
        ccmds = [_cmd(x) for x in cl if x]
        proto = ""
        if server.startswith((b"220 ", b"220-")):
            banner = server[:200].upper()
            is_ftp = b"FTP" in banner or any(c in ("USER", "SYST", "FEAT", "PASV", "EPSV", "PWD") for c in ccmds) or bool(ports & _FTP_PORTS)
            is_smtp = b"SMTP" in banner or any(c in ("EHLO", "HELO", "MAIL") for c in ccmds) or bool(ports & _SMTP_PORTS)
            if is_smtp and (not is_ftp or b"SMTP" in banner or any(c in ("EHLO", "HELO") for c in ccmds)):
                proto = "SMTP"
            elif is_ftp:
                proto = "FTP_CONTROL"
        elif server.startswith(b"+OK") and not resp_start(client) or (ports & _POP_PORTS and client.startswith(_POP_CMDS)):
            # (a POP3 server greets first, RFC 1939 4; a client that opens with a RESP array talks
            # to a Redis server, whose simple-string replies also read "+OK")
            proto = "POP3"
        elif server.startswith((b"* OK", b"* PREAUTH", b"* BYE")):
            proto = "IMAP"
        elif client.startswith((b"EHLO ", b"HELO ")):
            proto = "SMTP"
        elif ports & _IMAP_PORTS and len(cl) and b" " in cl[0] and cl[0].split(b" ", 2)[1:2] and \
                cl[0].split(b" ", 2)[1].upper() in (b"CAPABILITY", b"LOGIN", b"STARTTLS", b"AUTHENTICATE", b"ID"):
            proto = "IMAP"
        elif ports & _FTP_PORTS and client.startswith(_FTP_CMDS):
            proto = "FTP_CONTROL"
        if not proto:
            return Match.NO
        # STARTTLS-style upgrades
        upper = [x.upper() for x in cl]
        if proto == "SMTP" and any(x.startswith(b"STARTTLS") for x in upper):
            proto = "SMTPS" if self._accepted(sl, b"220") else proto
        elif proto == "POP3" and any(x.startswith(b"STLS") for x in upper):
            proto = "POPS" if self._accepted(sl, b"+OK", after=b"STLS") or len(s.dst_payloads) >= 3 else proto
        elif proto == "IMAP" and any(b" STARTTLS" in x[:40] for x in upper):
            proto = "IMAPS"
        elif proto == "FTP_CONTROL" and any(x.startswith(b"AUTH ") for x in upper) and \
                any(x[:4] in (b"234 ", b"334 ") for x in sl):
            # RFC 2228: a security mechanism accepted (234) or its data exchange begun (334): nDPI's FTPS
            proto = "FTPS"
        v.app_protocol = proto
        if ccmds:
            v.extra["commands"] = ",".join(dict.fromkeys(c for c in ccmds if c.isalpha())).strip(",")[:200]
        if sl and sl[0]:
            v.extra["banner"] = printable(sl[0], 200)
        if proto in ("SMTP", "SMTPS", "FTP_CONTROL") and not v.host:
            v.host = greeting_host(server_payloads)
        if proto == "SMTP" or proto == "SMTPS":
            for x in cl:
                if x[:5].upper() in (b"EHLO ", b"HELO "):
                    v.extra["smtp_helo"] = printable(x[5:], 200)
                elif x[:10].upper() == b"MAIL FROM:":
                    v.extra["smtp_mail_from"] = printable(x[10:], 200)
                elif x[:8].upper() == b"RCPT TO:":
                    v.extra["smtp_rcpt_to"] = printable(x[8:], 200)
        if proto in ("FTP_CONTROL", "POP3"):
            for x in cl:
                if x[:5].upper() == b"USER ":
                    v.extra["user"] = printable(x[5:], 128)
        # decided once the client has spoken (the upgrade, if any, is then visible)
        return Match.FINAL if len(s.src_payloads) >= 3 or len(s.dst_payloads) >= 4 else Match.PARTIAL

    @staticmethod
    def _accepted(server_lines: list[bytes], code: bytes, after: bytes = b"") -> bool:
        # the reply to STARTTLS is the last reply line that starts with the code
        return sum(1 for x in server_lines if x.startswith(code)) >= 2


class FTPData(Dissector):
    """FTP data connections carrying a directory listing (ls -l or MLSD format)."""

    name = "FTP_DATA"
    transports = TCP
    ports = frozenset({20})
    lead = {"TCP": (2, b"-dltms")}   # an ls -l line or an MLSD fact in one of the first 2 payloads

    def could_be(self, s: FlowSample) -> bool:
        return bool(s.src_payloads or s.dst_payloads)

    def dissect(self, s: FlowSample, v: Verdict) -> Match:
        for _src, p in ordered(s, 2):
            if len(p) >= 40 and p[:1] in (b"-", b"d", b"l") and p[1:10].replace(b"-", b"r").replace(b"w", b"r").replace(
                    b"x", b"r").replace(b"s", b"r").replace(b"t", b"r") == b"rrrrrrrrr":
                v.app_protocol = self.name
                return Match.FINAL
            if p.startswith((b"type=file;", b"type=dir;", b"type=cdir;", b"modify=", b"size=")) and b";" in p[:60]:
                v.app_protocol = self.name
                return Match.FINAL
        return Match.NO


PORT_HINTS = [PortHint("SMTP", {25, 587}, TCP), PortHint("POP3", {110}, TCP), PortHint("IMAP", {143}, TCP),
              PortHint("FTP_CONTROL", {21}, TCP), PortHint("SMTPS", {465}, TCP), PortHint("IMAPS", {993}, TCP),
              PortHint("POPS", {995}, TCP)]

DISSECTORS = [Mail(), FTPData(), *PORT_HINTS]
