"""The spool: JetStream messages not acknowledged at shutdown, kept on local disk until the next start.

One file per message under ``FT_SPOOL_DIR/<service>-<probe>[-shard<k>]/``,
written atomically (temporary file, then rename), named so that sorting gives
the order they were spooled in.  A file holds one JSON line (subject and
headers, the ``Nats-Msg-Id`` among them) and then the message body.  The next
start of the same service publishes each file with the same ``Nats-Msg-Id``
(JetStream drops a duplicate within the stream's duplicate window) and deletes
it once acknowledged.  The total size is capped by ``FT_SPOOL_MAX_BYTES``:
messages beyond it are dropped and counted.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import time
from pathlib import Path

log = logging.getLogger("flowtarget.spool")

SUFFIX = ".msg"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class Spool:
    def __init__(self, directory: str | os.PathLike[str], name: str, max_bytes: int) -> None:
        self.dir = Path(directory) / _SAFE.sub("_", name)[:128]
        self.max_bytes = max_bytes
        self.spooled = 0          # messages written
        self.dropped = 0          # messages not written: over the cap or the disk failed
        self.replayed = 0         # messages published from the spool
        self.corrupt = 0          # unreadable spool files (removed)
        self._bytes: int | None = None
        self._seq = itertools.count()

    # ------------------------------------------------------------------ writing

    def size(self) -> int:
        if self._bytes is None:
            total = 0
            for p in self.files():
                try:
                    total += p.stat().st_size
                except OSError:
                    pass
            self._bytes = total
        return self._bytes

    def put(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> bool:
        """Keep one message; False (counted in ``dropped``) when over the cap or the write failed."""
        head = json.dumps({"subject": subject, "headers": headers or {}}, ensure_ascii=True).encode() + b"\n"
        need = len(head) + len(data)
        try:
            if self.size() + need > self.max_bytes:
                self.dropped += 1
                log.error("spool %s full (%d of %d bytes): a message for %s is lost", self.dir, self.size(),
                          self.max_bytes, subject[:80])
                return False
            self.dir.mkdir(parents=True, exist_ok=True)
            name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._seq):06d}"
            tmp = self.dir / (name + ".tmp")
            with open(tmp, "wb") as fh:
                fh.write(head)
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.dir / (name + SUFFIX))
        except OSError as exc:
            self.dropped += 1
            log.error("could not spool a message for %s to %s: %s", subject[:80], self.dir, exc)
            return False
        self._bytes = self.size() + need
        self.spooled += 1
        return True

    # ------------------------------------------------------------------ reading

    def files(self) -> list[Path]:
        try:
            return sorted(p for p in self.dir.iterdir() if p.name.endswith(SUFFIX))
        except OSError:
            return []

    def load(self, path: Path) -> tuple[str, dict[str, str], bytes] | None:
        """(subject, headers, body) of one spool file; None (removed, counted) when unreadable."""
        try:
            raw = path.read_bytes()
            head, sep, body = raw.partition(b"\n")
            meta = json.loads(head) if sep else None
            if not isinstance(meta, dict) or not isinstance(meta.get("subject"), str) \
                    or not isinstance(meta.get("headers", {}), dict):
                raise ValueError("bad spool header")
            headers = {str(k): str(v) for k, v in meta.get("headers", {}).items()}
            return meta["subject"], headers, body
        except (OSError, ValueError) as exc:
            self.corrupt += 1
            log.error("spool file %s unreadable (%s): removed", path.name, exc)
            self.remove(path)
            return None

    def remove(self, path: Path) -> None:
        try:
            size = path.stat().st_size
            path.unlink()
        except OSError:
            return
        if self._bytes is not None:
            self._bytes = max(0, self._bytes - size)

    def stats(self) -> dict[str, int]:
        return {"spooled": self.spooled, "spool_dropped": self.dropped, "spool_replayed": self.replayed,
                "spool_corrupt": self.corrupt, "spool_pending": len(self.files()) if self.dir.exists() else 0}
