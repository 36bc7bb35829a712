"""One way for the classify tests to build a FlowSample from payloads."""

from __future__ import annotations

from shared.models import FlowSample


def sample(transport: str = "TCP", src=(), dst=(), sport: int = 40000, dport: int = 9, dirs: str | None = None,
           flow_id: str = "") -> FlowSample:
    """A sample of 10.0.0.1:sport -> 10.0.0.2:dport; ``dirs`` defaults to all src payloads, then all dst ones."""
    src, dst = list(src), list(dst)
    return FlowSample(timestamp=1.0, probe="t", flow_id=flow_id, transport=transport, src_ip="10.0.0.1",
                      src_port=sport, dst_ip="10.0.0.2", dst_port=dport, first_seen=1.0, src_payloads=src,
                      dst_payloads=dst, payload_dirs=dirs if dirs is not None else "s" * len(src) + "d" * len(dst))


def sampler(transport: str = "TCP", dport: int = 9, flow_id: str = ""):
    """``sample`` with other defaults; the transport stays its first positional argument."""

    def make(transport: str = transport, src=(), dst=(), sport: int = 40000, dport: int = dport,
             dirs: str | None = None) -> FlowSample:
        return sample(transport, src, dst, sport, dport, dirs, flow_id)

    return make
