"""Optional second engine: libndpi through a small cffi binding, for flows the built-in dissectors leave Unknown.

The binding is compiled with cffi (API mode) against the installed headers
(Debian: ``libndpi-dev``, /usr/include/ndpi) the first time it is needed, into
a cache directory (``FT_NDPI_BUILD_DIR`` or ~/.cache/flowtarget/ndpi), or ahead
of time with ``python -m services.classify.ndpi_engine --build``.  Without the
library, the headers or a C compiler there is no second engine and one log
line says so.

nDPI wants whole IP packets and keeps state per flow; a FlowSample carries
payloads only, and classify is stateless.  So for each sample we replay the
sample's payloads, in arrival order, into a fresh nDPI flow as synthetic IPv4
or IPv6 packets (for TCP after a synthetic three-way handshake, with
consistent sequence numbers), then read nDPI's answer (and give up, without
port guessing, when it has not decided).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import struct
import sys
from pathlib import Path
from typing import Any

from shared.models import FlowSample

log = logging.getLogger("flowtarget.classify.ndpi")

_MODULE = "_ft_ndpi_cffi"

_CDEF = """
typedef struct { ...; } ft_mod;
void *ft_init(void);
void *ft_flow_new(void);
void ft_flow_free(void *flow);
int ft_process(void *mod, void *flow, const unsigned char *pkt, unsigned short len, uint64_t ts_ms,
               uint16_t *master, uint16_t *app);
int ft_giveup(void *mod, void *flow, uint16_t *master, uint16_t *app);
const char *ft_name(void *mod, uint16_t id);
const char *ft_host(void *flow);
const char *ft_revision(void);
"""

_SOURCE = r"""
#include <stdlib.h>
#include <string.h>
#include <ndpi/ndpi_api.h>
typedef struct { int unused; } ft_mod;

void *ft_init(void) {
  struct ndpi_detection_module_struct *m = ndpi_init_detection_module(ndpi_no_prefs);
  NDPI_PROTOCOL_BITMASK all;
  if (m == NULL) return NULL;
  NDPI_BITMASK_SET_ALL(all);
  ndpi_set_protocol_detection_bitmask2(m, &all);
  ndpi_finalize_initialization(m);
  return m;
}
void *ft_flow_new(void) {
  size_t n = ndpi_detection_get_sizeof_ndpi_flow_struct();
  void *f = ndpi_flow_malloc(n);
  if (f) memset(f, 0, n);
  return f;
}
void ft_flow_free(void *flow) { if (flow) ndpi_free_flow((struct ndpi_flow_struct *)flow); }
int ft_process(void *mod, void *flow, const unsigned char *pkt, unsigned short len, uint64_t ts_ms,
               uint16_t *master, uint16_t *app) {
  ndpi_protocol p = ndpi_detection_process_packet((struct ndpi_detection_module_struct *)mod,
                                                  (struct ndpi_flow_struct *)flow, pkt, len, ts_ms);
  *master = p.master_protocol; *app = p.app_protocol;
  return 0;
}
int ft_giveup(void *mod, void *flow, uint16_t *master, uint16_t *app) {
  u_int8_t guessed = 0;
  ndpi_protocol p = ndpi_detection_giveup((struct ndpi_detection_module_struct *)mod,
                                          (struct ndpi_flow_struct *)flow, 0, &guessed);
  *master = p.master_protocol; *app = p.app_protocol;
  return guessed;
}
const char *ft_name(void *mod, uint16_t id) {
  return ndpi_get_proto_name((struct ndpi_detection_module_struct *)mod, id);
}
const char *ft_host(void *flow) { return ((struct ndpi_flow_struct *)flow)->host_server_name; }
const char *ft_revision(void) { return ndpi_revision(); }
"""


def build_dir() -> Path:
    env = os.environ.get("FT_NDPI_BUILD_DIR")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "flowtarget" / "ndpi"


def build(out_dir: Path | None = None) -> Path:
    """Compile the binding (needs cffi, a C compiler and libndpi-dev); returns the directory holding it."""
    from cffi import FFI

    out = out_dir or build_dir()
    out.mkdir(parents=True, exist_ok=True)
    ffi = FFI()
    ffi.cdef(_CDEF.replace("typedef struct { ...; } ft_mod;\n", ""))
    ffi.set_source(_MODULE, _SOURCE, libraries=["ndpi"], include_dirs=["/usr/include/ndpi"])
    ffi.compile(tmpdir=str(out), verbose=False)
    return out


def _import_binding(out: Path):
    for cand in sorted(out.glob(_MODULE + "*.so")):
        spec = importlib.util.spec_from_file_location(_MODULE, cand)
        if spec and spec.loader:
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            return mod
    return None


def _packed(ip: str) -> bytes | None:
    """An address's bytes (inet_pton: a tenth of ipaddress's cost, a third of this engine's Python per sample
    before); None when it is not one."""
    try:
        if ":" in ip:
            return socket.inet_pton(socket.AF_INET6, ip.split("%", 1)[0])   # a zone index is not on the wire
        return socket.inet_pton(socket.AF_INET, ip)
    except (OSError, ValueError, TypeError):
        return None


def _checksum_free_ipv4(src: bytes, dst: bytes, proto: int, l4len: int, ident: int) -> bytes:
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + l4len, ident & 0xFFFF, 0x4000, 64, proto, 0, src, dst)


class NdpiEngine:
    """Callable: ``engine(sample) -> (app_protocol, application, host) | None``."""

    def __init__(self, binding: Any) -> None:
        self.ffi = binding.ffi
        self.lib = binding.lib
        self.mod = self.lib.ft_init()
        if self.mod == self.ffi.NULL:
            raise RuntimeError("ndpi_init_detection_module failed")
        self.revision = self.ffi.string(self.lib.ft_revision()).decode("ascii", "replace")
        self._names: dict[int, str] = {}
        self._m = self.ffi.new("uint16_t *")
        self._a = self.ffi.new("uint16_t *")
        self.last_host = ""

    def name(self, pid: int) -> str:
        n = self._names.get(pid)
        if n is None:
            p = self.lib.ft_name(self.mod, pid)
            n = self.ffi.string(p).decode("ascii", "replace") if p != self.ffi.NULL else str(pid)
            self._names[pid] = n
        return n

    def _packets(self, s: FlowSample):
        a, b = _packed(s.src_ip), _packed(s.dst_ip)
        if a is None or b is None:
            return
        v6 = len(a) == 16
        if len(b) != len(a):
            return
        tcp = s.transport == "TCP"
        proto = 6 if tcp else 17
        ident = 1

        def ip(src: bytes, dst: bytes, l4: bytes) -> bytes:
            nonlocal ident
            ident += 1
            if v6:
                return struct.pack(">IHBB16s16s", 0x60000000, len(l4), proto, 64, src, dst) + l4
            return _checksum_free_ipv4(src, dst, proto, len(l4), ident) + l4

        sp, dp = s.src_port, s.dst_port
        if tcp:
            seq = {True: 1000, False: 50000}

            def seg(from_src: bool, flags: int, data: bytes = b"") -> bytes:
                src, dst = (a, b) if from_src else (b, a)
                sport, dport = (sp, dp) if from_src else (dp, sp)
                ack = seq[not from_src] if flags & 0x10 else 0
                hdr = struct.pack(">HHIIBBHHH", sport, dport, seq[from_src] & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                                  5 << 4, flags, 65535, 0, 0)
                seq[from_src] += len(data) + (1 if flags & 0x03 else 0)
                return ip(src, dst, hdr + data)

            yield seg(True, 0x02)
            yield seg(False, 0x12)
            yield seg(True, 0x10)
            for from_src, data in _ordered(s):
                yield seg(from_src, 0x18, data[:1400])
        else:
            for from_src, data in _ordered(s):
                src, dst = (a, b) if from_src else (b, a)
                sport, dport = (sp, dp) if from_src else (dp, sp)
                data = data[:1400]
                yield ip(src, dst, struct.pack(">HHHH", sport, dport, 8 + len(data), 0) + data)

    def __call__(self, s: FlowSample) -> tuple[str, str, str] | None:
        if s.transport not in ("TCP", "UDP") or not (s.src_payloads or s.dst_payloads):
            return None
        flow = self.lib.ft_flow_new()
        if flow == self.ffi.NULL:
            return None
        try:
            m = a = 0
            ts = int(s.first_seen * 1000)
            for pkt in self._packets(s):
                ts += 1
                self.lib.ft_process(self.mod, flow, pkt, len(pkt), ts, self._m, self._a)
                m, a = self._m[0], self._a[0]
                if a or m:
                    break
            if not (a or m):
                self.lib.ft_giveup(self.mod, flow, self._m, self._a)
                m, a = self._m[0], self._a[0]
            self.last_host = self.ffi.string(self.lib.ft_host(flow)).decode("utf-8", "replace")
        finally:
            self.lib.ft_flow_free(flow)
        if not (a or m):
            return None
        host = self.last_host
        if m and a and m != a:
            return self.name(m), self.name(a), host
        return self.name(m or a), "", host


def _ordered(s: FlowSample):
    sp, dp = s.src_payloads, s.dst_payloads
    i = j = 0
    if len(s.payload_dirs) == len(sp) + len(dp):
        for c in s.payload_dirs:
            if c == "s":
                yield True, sp[i]
                i += 1
            else:
                yield False, dp[j]
                j += 1
        return
    for p in sp:
        yield True, p
    for p in dp:
        yield False, p


_loaded: NdpiEngine | None = None
_tried = False


def load_ndpi(build_if_missing: bool = True) -> NdpiEngine | None:
    """The libndpi engine, or None (logged once) when it cannot be had here."""
    global _loaded, _tried
    if _tried:
        return _loaded
    _tried = True
    out = build_dir()
    try:
        binding = _import_binding(out) if out.is_dir() else None
        if binding is None:
            if not build_if_missing:
                log.info("libndpi engine not built (python -m services.classify.ndpi_engine --build): not used")
                return None
            if not Path("/usr/include/ndpi/ndpi_api.h").is_file():
                log.info("libndpi headers not installed (libndpi-dev): no second engine")
                return None
            build(out)
            binding = _import_binding(out)
        if binding is None:
            log.info("libndpi binding could not be loaded: no second engine")
            return None
        _loaded = NdpiEngine(binding)
        log.info("libndpi %s loaded as second engine for flows left Unknown", _loaded.revision)
    except Exception as e:  # noqa: BLE001 - absent library/compiler: absent engine
        log.info("libndpi not available (%s): no second engine", str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
        _loaded = None
    return _loaded


if __name__ == "__main__":
    if "--build" in sys.argv:
        print(build())
    else:
        eng = load_ndpi()
        print("libndpi engine:", eng.revision if eng else "not available")
