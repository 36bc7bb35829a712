"""Lab: traffic among several hosts, captured live by the capture service with FT_RECORD_DIR set;
``flowtarget pcap --host`` / ``--flow-id`` give exactly the packets tcpdump saw on the same
interface (frame by frame, with dpkt), across rotated files."""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
import sys
import threading
import time
from pathlib import Path

import dpkt
import pytest

from tests.lab import Lab, servers, skip_unless_lab
from tests.lab.tools import start_tcpdump, wait_pcap_settled

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[3]
TOOLS = str(ROOT / "tests" / "lab" / "tools.py")


def frames_of(path: Path) -> list[tuple[bytes, tuple]]:
    out = []
    with open(path, "rb") as fh:
        for _ts, buf in dpkt.pcap.Reader(fh):
            eth = dpkt.ethernet.Ethernet(buf)
            ip = eth.data
            if not isinstance(ip, dpkt.ip.IP):
                continue
            l4 = ip.data
            out.append((bytes(buf), (str(ipaddress.ip_address(ip.src)), getattr(l4, "sport", 0),
                                     str(ipaddress.ip_address(ip.dst)), getattr(l4, "dport", 0), ip.p)))
    return out


def record_live(lab, settings, truth: Path, traffic) -> dict:
    """Run the capture service on the lab's probe interface while ``traffic()`` runs, tcpdump (whole
    frames) beside it writing ``truth``; returns {"events": the stream's events}."""
    from flowtarget.orchestrate import read_stream
    from services.capture import service
    from shared.bus import Bus

    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    result: dict = {}

    def run() -> None:
        async def main() -> None:
            bus = await Bus.connect(settings, "capture", stop)
            await service.main(settings, bus, stop)
            result["events"] = await read_stream(settings)
            await bus.close()
        loop.run_until_complete(main())

    th = threading.Thread(target=run, daemon=True)
    th.start()
    time.sleep(1.5)                       # the capture handle is open
    dump = start_tcpdump(lab, "probe", lab.probe_iface, truth)
    traffic()
    time.sleep(1.0)
    wait_pcap_settled(truth)
    dump.terminate()
    dump.wait(5)
    loop.call_soon_threadsafe(stop.set)
    th.join(60)
    return result


def test_live_recording_then_pcap_by_host_and_flow_equals_tcpdump(nats_server, tmp_path):
    skip_unless_lab()
    from services.capture.recorder import list_store
    from shared.settings import CaptureSettings

    store = tmp_path / "store"
    with Lab(hosts=("client", "server", "h3"), mode="hub", probe_in_root=True, net=93) as lab:
        srv, cli, h3 = lab.server, lab.client, lab.host("h3")
        servers.start_http(lab)
        servers.start_udpecho(lab, port=40000)
        truth = tmp_path / "tcpdump.pcap"
        settings = CaptureSettings(nats_url=nats_server.url, probe="lrec", iface=lab.probe_iface, verdict_wait_s=0,
                                   stream_storage="memory", record_dir=store, record_max_bytes=8 << 20,
                                   record_file_bytes=8 * 1024, evidence_dir=tmp_path / "ev")

        def traffic() -> None:
            for host in ("client", "h3"):
                for _ in range(3):
                    lab.run(host, "curl", "-s", "-o", "/dev/null", f"http://{srv.ip}/", check=True)
                lab.run(host, sys.executable, TOOLS, "udpsend", "--dst", srv.ip, "--port", "40000", "--count", "20",
                        "--interval", "0.01", "--size", "300", check=True)

        result = record_live(lab, settings, truth, traffic)

    pcaps = list_store(store)
    assert len(pcaps) > 3                    # the traffic went through rotated files
    seen = frames_of(truth)
    for ip in (cli.ip, h3.ip):
        out = tmp_path / f"{ip}.pcap"
        r = subprocess.run([sys.executable, "-m", "flowtarget", "pcap", "--dir", str(store), "--host", ip, "-o", str(out)],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        want = [f for f, a in seen if ip in (a[0], a[2])]
        got = [f for f, _a in frames_of(out)]
        assert len(want) > 60 and got == want
    ended = [e for e in result["events"] if e["event_type"] == "flow" and e["phase"] == "end"
              and e["src_ip"] == h3.ip and e["dst_port"] in (80, 40000)]
    assert len(ended) >= 4
    for e in ended:
        out = tmp_path / f"{e['flow_id']}.pcap"
        r = subprocess.run([sys.executable, "-m", "flowtarget", "pcap", "--dir", str(store), "--flow-id", e["flow_id"],
                            "-o", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        ends = {(e["src_ip"], e["src_port"]), (e["dst_ip"], e["dst_port"])}
        want = [f for f, a in seen if {(a[0], a[1]), (a[2], a[3])} == ends]
        assert want and [f for f, _a in frames_of(out)] == want


def test_live_recording_with_a_short_snap_length_keeps_the_original_lengths(nats_server, tmp_path):
    """Captured with a snap length of 96: ``flowtarget pcap`` gives each frame cut to 96 bytes with its
    original length, as tcpdump's whole frames of the same traffic give it (before, a frame's cut length
    was written as its original length, and readers saw every long frame as malformed)."""
    skip_unless_lab()
    from tests.services.capture.test_wire_len import records
    from shared.settings import CaptureSettings

    store = tmp_path / "store"
    with Lab(hosts=("client", "server"), mode="hub", probe_in_root=True, net=94) as lab:
        srv, cli = lab.server, lab.client
        servers.start_http(lab)
        servers.start_udpecho(lab, port=40000)
        truth = tmp_path / "tcpdump.pcap"
        settings = CaptureSettings(nats_url=nats_server.url, probe="lsnap", iface=lab.probe_iface, verdict_wait_s=0,
                                   stream_storage="memory", record_dir=store, record_max_bytes=8 << 20,
                                   snaplen=96, evidence_dir=tmp_path / "ev")

        def traffic() -> None:
            for _ in range(3):
                lab.run("client", "curl", "-s", "-o", "/dev/null", f"http://{srv.ip}/", check=True)
            lab.run("client", sys.executable, TOOLS, "udpsend", "--dst", srv.ip, "--port", "40000", "--count", "20",
                    "--interval", "0.01", "--size", "700", check=True)

        record_live(lab, settings, truth, traffic)

    out = tmp_path / "client.pcap"
    r = subprocess.run([sys.executable, "-m", "flowtarget", "pcap", "--dir", str(store), "--host", cli.ip,
                        "-o", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    want = [(min(len(f), 96), len(f), f[:96]) for f, a in frames_of(truth) if cli.ip in (a[0], a[2])]
    got = records(out)[1]
    assert sum(1 for c, o, _f in want if o > c) >= 40          # the UDP datagrams and the HTTP answers were cut
    assert got == want
