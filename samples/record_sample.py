#!/usr/bin/env python3
"""Record samples/sample.pcap: real traffic between real programs in a namespace lab.

Run as root from the repository root:

    /work/venv/bin/python samples/record_sample.py [--out samples/sample.pcap]

It builds a lab (tests/lab: client 10.77.0.2 / fd77::2, server 10.77.0.3 /
fd77::3, a probe on a hub-mode bridge), starts real servers in the server
namespace (a Python HTTP/1.1 server, a TLS 1.3-only HTTPS server with a
certificate made now, dnsmasq, OpenSSH's sshd, a UDP echo server), runs real
clients in the client namespace (curl, dig, ssh, a raw-socket ping, a custom
UDP sender) and records what the probe sees with tcpdump.  See samples/README.md
for the flows it contains and how each should be classified.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.lab import Lab, servers  # noqa: E402

TOOLS = str(REPO / "tests" / "lab" / "tools.py")
HTTP_NAME = "web.flowtarget.test"
TLS_NAME = "secure.flowtarget.test"
DNS_NAME = "www.flowtarget.test"


def record(out: Path) -> None:
    work = servers.tempdir()
    try:
        with Lab(mode="hub") as lab:
            srv, cli = lab.server, lab.client
            servers.start_http(lab, port=80)
            servers.start_http(lab, port=8080, ip=srv.ip6)
            servers.start_https(lab, work, port=443, names=[TLS_NAME])
            servers.start_dnsmasq(lab, {DNS_NAME: [srv.ip, srv.ip6]})
            servers.start_sshd(lab, work, port=22)
            servers.start_udpecho(lab, port=40000)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = work / "sample.pcap"
            dump = lab.popen("probe", "tcpdump", "-i", lab.probe_iface, "--immediate-mode", "-U", "-s", "0", "-w", str(tmp),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)

            def client(*cmd: str) -> subprocess.CompletedProcess:
                r = lab.run("client", *cmd, timeout=30)
                print(f"$ {' '.join(cmd)} -> rc={r.returncode} {r.stdout.strip()[-60:]!r}", file=sys.stderr)
                return r

            # ping (ICMP) first: it also makes the client ARP for the server
            client(sys.executable, TOOLS, "ping", srv.ip, "--count", "2", "--interval", "0.1")
            # DNS: A and AAAA for the web name, and a name dnsmasq does not know
            client("dig", f"@{srv.ip}", DNS_NAME, "A", "+tries=1", "+time=2")
            client("dig", f"@{srv.ip}", DNS_NAME, "AAAA", "+tries=1", "+time=2")
            # HTTP/1.1 with a Host name
            client("curl", "-s", "--http1.1", "-A", "flowtarget-sample/1.0", "--resolve",
                   f"{HTTP_NAME}:80:{srv.ip}", f"http://{HTTP_NAME}/index.html")
            # TLS 1.3 with SNI
            client("curl", "-s", "-k", "--tlsv1.3", "--resolve", f"{TLS_NAME}:443:{srv.ip}",
                   f"https://{TLS_NAME}/")
            # HTTP over IPv6
            client("curl", "-s", "--http1.1", "-g", "--resolve", f"{HTTP_NAME}:8080:[{srv.ip6}]",
                   f"http://{HTTP_NAME}:8080/v6")
            # SSH: banners and KEXINIT are exchanged, authentication fails (BatchMode)
            client("ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o",
                   "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5", f"sample@{srv.ip}", "true")
            # a custom UDP protocol nothing can classify: 6 datagrams of 48 bytes, each echoed
            client(sys.executable, TOOLS, "udpsend", "--dst", srv.ip, "--port", "40000", "--count", "6",
                   "--interval", "0.2", "--size", "48", "--sport", "40001")
            time.sleep(0.5)
            dump.send_signal(signal.SIGINT)
            dump.wait(timeout=5)
            shutil.copyfile(tmp, out)
            print(f"wrote {out} ({out.stat().st_size} bytes) client={cli.ip} server={srv.ip}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "samples" / "sample.pcap")
    a = ap.parse_args()
    record(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
