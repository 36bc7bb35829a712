"""What the client saw of a block: an operator's reading of one BlockAction.

block records, per action, the rule's action, the race's outcome, the attempts
and a message with the evidence it judged by (services/block/tcp_race.py and
dns_race.py write it).  This turns those fields into one sentence from the
client's side ("got a reset before any of the server's data", "got the forged
answer 0.0.0.0", "reached the real server: nothing was sent") and a class
(``blocked``, ``passed``, ``partly``, ``undecided``) the page colours by.
Nothing is inferred beyond what the record carries: the evidence is shown as
block wrote it.
"""

from __future__ import annotations

import re
from typing import Any

_ANSWERED = re.compile(r"answered (\S+)\s*$")

#: outcomes where block sent nothing into the flow: the client talked to the real server
_NOTHING_SENT = {
    "dry_run": "nothing was sent (dry run)",
    "allowlisted": "nothing was sent: the flow is allowlisted",
    "rate_limited": "nothing was sent: the injection rate limit was reached",
    "not_possible": "nothing could be sent",
}


def _int(v: Any) -> int:
    try:
        return int(v or 0)
    except (TypeError, ValueError):
        return 0


def client_view(b: dict[str, Any]) -> dict[str, str]:
    """{"kind": blocked|passed|partly|undecided, "saw": one sentence, "evidence": block's own words}."""
    action = str(b.get("action") or "")
    outcome = str(b.get("outcome") or "")
    message = str(b.get("message") or "")
    attempts = _int(b.get("attempts"))
    tls = 443 in (_int(b.get("dst_port")), _int(b.get("src_port")))

    if action == "alert":
        return {"kind": "passed", "saw": "The client got the real server's answer: a monitoring rule (alert only), "
                                         "nothing was sent.", "evidence": message}
    if outcome in _NOTHING_SENT:
        why = _NOTHING_SENT[outcome]
        if outcome == "dry_run" and "report only" in message:
            why = "nothing was sent (report only: block has no injection interface)"
        what = "its DNS answer from the real resolver" if action == "dns_block" else "the real server's answer"
        return {"kind": "passed", "saw": f"The client got {what}: {why}.", "evidence": message}
    if action == "dns_block":
        m = _ANSWERED.search(message)
        forged = m.group(1) if m else "the forged answer"
        forged = "NXDOMAIN (no such name)" if forged == "NXDOMAIN" else forged
        if outcome == "won":
            real = (" before the real one (which came later and was ignored)" if "before the real one" in message
                    else "; no real answer was seen")
            return {"kind": "blocked", "saw": f"The client got the forged answer {forged}{real}.",
                    "evidence": message}
        if outcome == "lost":
            return {"kind": "passed", "saw": f"The client got the real answer: it arrived before the forged "
                                             f"one ({forged}) was sent.", "evidence": message}
        return {"kind": "undecided", "saw": f"Forged answer {forged} sent; which answer the client took is not "
                                            "known.", "evidence": message}

    page = action == "http_block" and not tls
    if outcome == "won":
        if page:
            saw = ("The client got the block page instead of the server's answer (it acknowledged the page)"
                   if "acknowledged the block page" in message else
                   "The client got the block page instead of the server's answer, and the server a reset")
        else:
            what = "TLS: a reset instead of a page" if action == "http_block" else "a reset"
            saw = f"The client got {what} before any of the server's data: its connection was closed"
        if attempts > 1:
            saw += f" (after {attempts} attempts)"
        return {"kind": "blocked", "saw": saw + ".", "evidence": message}
    if outcome == "lost":
        saw = "The client got (part of) the real server's answer first"
        if attempts > 1:
            saw += f"; block reset the connection again after it ({attempts} attempts)"
        else:
            saw += "; the reset came too late"
        return {"kind": "partly", "saw": saw + ".", "evidence": message}
    if outcome == "unknown":
        if "no further packet" in message:
            return {"kind": "undecided", "saw": "The rule appeared while the connection was idle: it sent nothing "
                                                "more, so nothing was injected.", "evidence": message}
        return {"kind": "undecided", "saw": "Photo finish: the server answered while block injected; the client may "
                                            "have seen some of the real answer before the "
                                            + ("block page." if page else "reset."), "evidence": message}
    return {"kind": "undecided", "saw": f"Outcome {outcome or 'not reported'}.", "evidence": message}
