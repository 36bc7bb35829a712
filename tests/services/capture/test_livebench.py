"""bench live's frame loader: which frames are IP fragments (left out with --shards, whose fanout reassembles them)."""

from __future__ import annotations

import struct

from services.capture.livebench import _is_fragment, _load_frames

ETH = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01"


def ip4(frag: int, vlans: int = 0) -> bytes:
    tags = b"".join(struct.pack("!HH", 0x8100, 10 + k) for k in range(vlans))
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, frag, 64, 17, 0, b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02")
    return ETH + tags + b"\x08\x00" + ip + struct.pack("!HHHH", 1, 2, 8, 0)


def ip6(nxt: int) -> bytes:
    return ETH + b"\x86\xdd" + struct.pack("!IHBB", 0x60000000, 8, nxt, 64) + bytes(32) + bytes(8)


def test_fragments_are_told_apart():
    assert not _is_fragment(ip4(0)) and not _is_fragment(ip4(0x4000))        # DF only: whole
    assert _is_fragment(ip4(0x2000)) and _is_fragment(ip4(0x00B9))            # first (MF), a later one
    assert _is_fragment(ip4(0x2000, vlans=2)) and not _is_fragment(ip4(0, vlans=1))
    assert _is_fragment(ip6(44)) and not _is_fragment(ip6(17))
    assert not _is_fragment(ETH + b"\x08\x06" + bytes(28))                    # ARP
    assert not _is_fragment(ETH + b"\x08\x00\x45")                            # truncated: not claimed


def test_loader_leaves_fragments_out_only_when_asked(tmp_path):
    frames = [ip4(0), ip4(0x2000), ip4(0x00B9), ip6(44), ip6(17)]
    p = tmp_path / "f.pcap"
    with open(p, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i, fr in enumerate(frames):
            fh.write(struct.pack("<IIII", 1000 + i, 0, len(fr), len(fr)) + fr)
    assert _load_frames(str(p), 100) == (frames, 0)
    assert _load_frames(str(p), 100, skip_fragments=True) == ([frames[0], frames[4]], 3)
    assert _load_frames(str(p), 1, skip_fragments=True) == ([frames[0]], 0)
