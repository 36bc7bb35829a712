"""A labelled corpus through capture's FlowMeter and the built-in engine, in one process.

What the pipeline does, without NATS: every sample of a flow is classified in order by one Engine
(as one classify replica does, with its memo of final verdicts) until the first FINAL verdict, when
capture stops sampling; the flow keeps the verdict of its last answered sample.  A flow that never
carried payload gets the engine's port guess, as capture's end record does.

    .venv/bin/python -m tests.services.classify.corpus_eval DIR OUT.jsonl   # then score_ndpi.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from services.classify.engine import Engine
from shared.models import FlowRecord, FlowSample, PacketEvent

CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".trace")


class _AllSamples:
    def __init__(self) -> None:
        self.samples: dict[str, list[FlowSample]] = {}
        self.ends: list[FlowRecord] = []

    def sample(self, s: FlowSample) -> None:
        self.samples.setdefault(s.flow_id, []).append(s)

    def flow(self, rec: FlowRecord) -> None:
        if rec.phase == "end":
            self.ends.append(rec)

    def packet(self, p: PacketEvent) -> None:
        pass


def captures(corpus: Path) -> list[Path]:
    return sorted(p for p in corpus.iterdir() if p.name.endswith(CAPTURE_SUFFIXES))


def classify_file(path: Path, engine: Engine) -> list[dict[str, Any]]:
    """One scorer flow dict per flow of one capture file."""
    from services.capture.offline import replay

    sink = _AllSamples()
    replay([path], sink, probe="eval")
    out = []
    for rec in sink.ends:
        app, host, application = "Unknown", "", ""
        for s in sink.samples.get(rec.flow_id, ()):
            v = engine.classify(s)
            app, host, application = v.app_protocol, v.host, v.application
            if v.final:
                break
        else:
            if rec.flow_id not in sink.samples:
                app = engine.guess(rec.transport, rec.src_port, rec.dst_port) or "Unknown"
        out.append(dict(pcap=path.name, transport=rec.transport, src_ip=rec.src_ip, src_port=rec.src_port,
                        dst_ip=rec.dst_ip, dst_port=rec.dst_port, app_protocol=app, host=host,
                        application=application))
    return out


def classify_corpus(corpus: Path, engine: Engine | None = None) -> list[dict[str, Any]]:
    engine = engine or Engine()
    flows: list[dict[str, Any]] = []
    for path in captures(corpus):
        flows.extend(classify_file(path, engine))
    return flows


def main(argv: list[str]) -> int:
    corpus, out = Path(argv[0]), Path(argv[1])
    with open(out, "w") as fh:
        for f in classify_corpus(corpus):
            fh.write(json.dumps(f) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
