#!/usr/bin/env python3
"""Build a large Ethernet pcap from the nDPI corpus by replicating it with shifted addresses.

    python bench/make_big_pcap.py --out /tmp/big.pcap [--packets 1000000] [--corpus DIR]

Every corpus capture is converted to Ethernet (raw IP, Linux cooked and BSD
loopback frames get a synthetic Ethernet header; other link types are skipped)
and appended in turn, replica after replica, until ``--packets`` frames are
written.  Replica r XORs r into the second octet of the outer IPv4 addresses
(the fourth byte of IPv6 addresses), so each replica's flows are new flows.
Timestamps are rebased to one increasing timeline (gaps inside a file are
kept up to 1 s; files follow each other 1 ms apart).

A flow profile closer to an access network's (issue 12: ~12 packets per flow,
a third of the TCP flows one-way)::

    python bench/make_big_pcap.py --out /tmp/profile.pcap --profile issue12

``--profile issue12`` is ``--one-way-tcp-every 3`` (the corpus already has ~12
packets per flow): every third TCP flow (in order of appearance) keeps only
the direction of its first packet.  ``--max-flow-packets N`` also cuts every
flow to its first N packets.  The script prints the packets per flow it wrote.

A mobile core's or a tunnelled WAN's mirror port (every IP packet inside a tunnel)::

    python bench/make_big_pcap.py --out /tmp/gtp.pcap --tunnel gtp    # or --tunnel ipip

``--tunnel gtp`` puts each Ethernet frame's IP packet into GTP-U (outer IPv4, UDP 2152, a G-PDU whose TEID
follows the inner addresses) between two fixed tunnel endpoints; ``--tunnel ipip`` into IPv4 (protocol 4
or 41) between them.  Frames that are not IP stay as they are.

A mirror delivered over the network (every frame, whatever it carries, inside the mirror's tunnel)::

    python bench/make_big_pcap.py --out /tmp/vxlan.pcap --tunnel vxlan   # or --tunnel erspan

``--tunnel vxlan`` puts each Ethernet frame into VXLAN (UDP 4789, VNI 16, as AWS VPC traffic mirroring
delivers it; a few source ports), ``--tunnel erspan`` into ERSPAN type II (GRE with a sequence number, as
Cisco's remote SPAN delivers it), both between two fixed endpoints.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dpkt  # noqa: E402

from services.capture.decode import decode  # noqa: E402
from services.capture.sources import CaptureFileError, FileSource  # noqa: E402

PROFILES = {"issue12": {"max_flow_packets": 0, "one_way_tcp_every": 3}}

ETH_HDR4 = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
ETH_HDR6 = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x86\xdd"


def to_ethernet(frame: bytes, dlt: int) -> bytes | None:
    if dlt == 1:
        return frame
    if dlt in (12, 14, 101, 228, 229):
        ip = frame
    elif dlt == 113 and len(frame) >= 16 and frame[14:16] in (b"\x08\x00", b"\x86\xdd"):
        ip = frame[16:]
    elif dlt == 276 and len(frame) >= 20 and frame[0:2] in (b"\x08\x00", b"\x86\xdd"):
        ip = frame[20:]
    elif dlt in (0, 108) and len(frame) >= 4:
        ip = frame[4:]
    else:
        return None
    if not ip:
        return None
    v = ip[0] >> 4
    if v == 4:
        return ETH_HDR4 + ip
    if v == 6:
        return ETH_HDR6 + ip
    return None


def shift(frame: bytes, r: int) -> bytes:
    """XOR the replica number into the outer IP addresses of an untagged Ethernet frame."""
    if r == 0 or len(frame) < 14:
        return frame
    et = frame[12:14]
    if et == b"\x08\x00" and len(frame) >= 34:
        b = bytearray(frame)
        b[27] ^= r & 0xFF
        b[31] ^= r & 0xFF
        return bytes(b)
    if et == b"\x86\xdd" and len(frame) >= 54:
        b = bytearray(frame)
        b[22 + 3] ^= r & 0xFF
        b[38 + 3] ^= r & 0xFF
        return bytes(b)
    return frame


def tunnel(frame: bytes, kind: str, n: int = 0) -> bytes:
    """An untagged Ethernet frame's IP packet inside GTP-U or IP-in-IP between two fixed endpoints; the whole
    frame (``n``: its number) inside VXLAN or ERSPAN II."""
    if kind in ("vxlan", "erspan"):
        if kind == "vxlan":
            body = b"\x08\x00\x00\x00\x00\x00\x10\x00" + frame
            body = struct.pack("!HHHH", 49152 + zlib.crc32(frame[26:38]) % 8, 4789, 8 + len(body), 0) + body
            proto = 17
        else:
            body = struct.pack("!BBHI", 0x10, 0, 0x88BE, n & 0xFFFFFFFF) + b"\x10\x05\x00\x07\0\0\0\0" + frame
            proto = 47
        outer = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0, 64, proto, 0,
                            b"\x0a\xfe\x00\x01", b"\x0a\xfe\x00\x02")
        return b"\x02\x00\x00\x00\xfe\x02\x02\x00\x00\x00\xfe\x01\x08\x00" + outer + body
    et = frame[12:14]
    if et not in (b"\x08\x00", b"\x86\xdd"):
        return frame
    ip = frame[14:]
    if kind == "gtp":
        teid = zlib.crc32(ip[12:20] if et == b"\x08\x00" else ip[8:40]) & 0xFFFF   # a few hundred tunnels
        body = struct.pack("!BBHI", 0x30, 0xFF, len(ip), teid) + ip
        body = struct.pack("!HHHH", 2152, 2152, 8 + len(body), 0) + body
        proto = 17
    else:
        body, proto = ip, 4 if et == b"\x08\x00" else 41
    outer = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0, 64, proto, 0,
                        b"\x0a\xfe\x00\x01", b"\x0a\xfe\x00\x02")
    return frame[:12] + b"\x08\x00" + outer + body


def load_corpus(corpus: Path) -> list[list[tuple[float, bytes]]]:
    files = []
    for p in sorted(corpus.iterdir()):
        if p.name.endswith(".out") or not p.is_file():
            continue
        try:
            src = FileSource(p)
        except CaptureFileError:
            continue
        frames = []
        for ts, fr, dlt in src.iter_dlt():
            e = to_ethernet(fr, dlt)
            if e is not None:
                frames.append((ts, e))
        if frames:
            files.append(frames)
    return files


def flow_key(frame: bytes) -> tuple | None:
    """(unordered endpoint key, key of this direction) of an Ethernet frame, or None (not IP)."""
    r = decode(frame, 1)
    if r[0]:
        return None
    _k, _ver, proto, src, dst, sp, dp = r[:7]
    vlan = r[13]
    a, b = (src, sp), (dst, dp)
    return (proto, vlan, min(a, b), max(a, b)), (proto, vlan, a, b)


def apply_profile(files: list[list[tuple[float, bytes]]], max_flow_packets: int,
                  one_way_tcp_every: int) -> tuple[list[list[tuple[float, bytes]]], int]:
    """Cut every flow to its first packets and make every n-th TCP flow one-way; returns (files, flows)."""
    out = []
    nflows = 0
    for frames in files:
        seen: dict[tuple, list] = {}   # flow -> [packets kept, first direction key or None (two-way)]
        tcp_flows = 0
        kept = []
        for ts, fr in frames:
            k = flow_key(fr)
            if k is None:
                kept.append((ts, fr))
                continue
            fk, dk = k
            st = seen.get(fk)
            if st is None:
                one_way = None
                if fk[0] == 6:
                    tcp_flows += 1
                    if one_way_tcp_every and tcp_flows % one_way_tcp_every == 0:
                        one_way = dk
                st = seen[fk] = [0, one_way]
            if st[1] is not None and dk != st[1]:
                continue
            if max_flow_packets and st[0] >= max_flow_packets:
                continue
            st[0] += 1
            kept.append((ts, fr))
        nflows += len(seen)
        if kept:
            out.append(kept)
    return out, nflows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--packets", type=int, default=1_000_000)
    default_corpus = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpus" / "ndpi" / "dev"
    ap.add_argument("--corpus", default=str(default_corpus))
    ap.add_argument("--profile", choices=sorted(PROFILES), help="a named flow profile (sets the two options below)")
    ap.add_argument("--max-flow-packets", type=int, default=0, help="keep at most this many packets of each flow")
    ap.add_argument("--one-way-tcp-every", type=int, default=0, help="every n-th TCP flow keeps one direction only")
    ap.add_argument("--tunnel", choices=("gtp", "ipip", "vxlan", "erspan"),
                    help="every IP packet inside GTP-U or IP-in-IP; every frame inside VXLAN or ERSPAN II")
    args = ap.parse_args(argv)
    if args.profile:
        for k, v in PROFILES[args.profile].items():
            setattr(args, k, v)
    files = load_corpus(Path(args.corpus))
    if not files:
        print(f"error: no usable captures in {args.corpus}", file=sys.stderr)
        return 1
    flows_per_replica = 0
    if args.max_flow_packets or args.one_way_tcp_every:
        files, flows_per_replica = apply_profile(files, args.max_flow_packets, args.one_way_tcp_every)
        per_replica = sum(len(f) for f in files)
        print(f"profile: {per_replica} packets in {flows_per_replica} flows per replica "
              f"({per_replica / max(1, flows_per_replica):.1f} packets per flow)")
    written = 0
    t = 1_700_000_000.0
    with open(args.out, "wb") as fh:
        w = dpkt.pcap.Writer(fh, snaplen=65535, linktype=1)
        r = 0
        while written < args.packets:
            for frames in files:
                prev = frames[0][0]
                for ts, fr in frames:
                    gap = ts - prev
                    prev = ts
                    t += min(max(gap, 0.0), 1.0)
                    fr = shift(fr, r)
                    w.writepkt(tunnel(fr, args.tunnel, written) if args.tunnel else fr, ts=t)
                    written += 1
                    if written >= args.packets:
                        break
                t += 0.001
                if written >= args.packets:
                    break
            r += 1
            if r > 255:
                break
    size = os.path.getsize(args.out)
    print(f"wrote {written} packets ({r} replicas of {len(files)} captures), {size / 1e6:.1f} MB to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
