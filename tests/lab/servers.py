"""Real servers for the lab: HTTP, TLS 1.3 (HTTPS), DNS (dnsmasq) and SSH (sshd).

Each ``start_*`` function starts the server inside a lab host's namespace with
``lab.popen`` (so the lab's teardown stops it), waits until it listens, and
returns the process.  HTTP and HTTPS are served by this file itself run as a
script (a tiny threaded server answering every GET with a fixed body), so the
lab needs nothing beyond Python; dnsmasq and sshd are Debian's.

    python servers.py http  --bind IP --port 80
    python servers.py https --bind IP --port 443 --cert C --key K
"""

from __future__ import annotations

import argparse
import datetime
import http.server
import shutil
import socketserver
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:  # pragma: no cover
    from .netlab import Lab

HERE = Path(__file__).resolve()
BODY = b"hello from the flowtarget lab server\n"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ftlab/1.0"
    sys_version = ""

    def do_GET(self) -> None:  # noqa: N802
        body = BODY
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        pass


class _TlsHandler(_Handler):
    """The TLS handshake runs in the connection's thread, not in accept()."""

    def setup(self) -> None:
        self.request.do_handshake()
        super().setup()


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def make_cert(directory: Path, names: Iterable[str] = ("lab.test",), ips: Iterable[str] = ()) -> tuple[Path, Path]:
    """A self-signed certificate (EC P-256) for ``names``; returns (cert, key) paths."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    names = list(names)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    san = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .sign(key, hashes.SHA256())
    )
    cpath, kpath = directory / "cert.pem", directory / "key.pem"
    cpath.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kpath.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    return cpath, kpath


def _serve(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["http", "https"])
    ap.add_argument("--bind", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    a = ap.parse_args(argv)
    import socket

    cls = type("_S", (_Server,), {"address_family": socket.AF_INET6 if ":" in a.bind else socket.AF_INET})
    srv = cls((a.bind, a.port), _TlsHandler if a.kind == "https" else _Handler)
    if a.kind == "https":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(a.cert, a.key)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
    print("READY", flush=True)
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    return 0


def _start_script(lab: "Lab", host: str, args: list[str], port: int) -> subprocess.Popen:
    p = lab.popen(host, sys.executable, str(HERE), *args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline() if p.stdout else ""
    if line.strip() != "READY":
        raise RuntimeError(f"lab server {args[0]} did not start in {host}")
    lab.wait_listening(host, port, "tcp")
    return p


def start_http(lab: "Lab", host: str = "server", port: int = 80, ip: str | None = None) -> subprocess.Popen:
    """A plain HTTP/1.1 server answering every GET with ``BODY``."""
    return _start_script(lab, host, ["http", "--bind", ip or lab.host(host).ip, "--port", str(port)], port)


def start_https(lab: "Lab", workdir: Path, host: str = "server", port: int = 443,
                names: Iterable[str] = ("lab.test",), ip: str | None = None) -> subprocess.Popen:
    """A TLS 1.3-only HTTPS server with a self-signed certificate made now for ``names``."""
    cert, key = make_cert(Path(workdir), names, [lab.host(host).ip])
    return _start_script(lab, host, ["https", "--bind", ip or lab.host(host).ip, "--port", str(port),
                                     "--cert", str(cert), "--key", str(key)], port)


def start_dnsmasq(lab: "Lab", records: dict[str, list[str]], host: str = "server", port: int = 53) -> subprocess.Popen:
    """dnsmasq answering ``records`` (name -> addresses, A and AAAA) and nothing else."""
    exe = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    h = lab.host(host)
    args = [exe, "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll", "--conf-file=/dev/null",
            f"--port={port}", f"--listen-address={h.ip}", "--bind-interfaces", "--except-interface=lo",
            "--pid-file=", "--user=root", "--cache-size=0"]
    for name, addrs in records.items():
        for a in addrs:
            args.append(f"--address=/{name}/{a}")
    p = lab.popen(host, *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.wait_listening(host, port, "udp")
    return p


def start_sshd(lab: "Lab", workdir: Path, host: str = "server", port: int = 22) -> subprocess.Popen:
    """OpenSSH's sshd in the foreground with a temporary config and host key."""
    workdir = Path(workdir)
    key = workdir / "ssh_host_ed25519_key"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    cfg = workdir / "sshd_config"
    cfg.write_text(
        f"Port {port}\nListenAddress {lab.host(host).ip}\nHostKey {key}\nPidFile none\nUsePAM no\n"
        "StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PubkeyAuthentication yes\nAuthorizedKeysFile none\nLogLevel QUIET\n"
    )
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    p = lab.popen(host, "/usr/sbin/sshd", "-D", "-e", "-f", str(cfg), stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL)
    lab.wait_listening(host, port, "tcp")
    return p


def start_udpecho(lab: "Lab", host: str = "server", port: int = 40000) -> subprocess.Popen:
    """A UDP echo server (tools.py udpecho): the server half of a custom "unknown" protocol."""
    p = lab.popen(host, sys.executable, str(HERE.parent / "tools.py"), "udpecho", "--bind", lab.host(host).ip,
                  "--port", str(port), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if not p.stdout or p.stdout.readline().strip() != "READY":
        raise RuntimeError("udpecho did not start")
    return p


def tempdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="ftlab-"))


if __name__ == "__main__":
    raise SystemExit(_serve(sys.argv[1:]))
