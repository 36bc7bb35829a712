# FlowTarget image: one image for capture, classify, store and block
# (docker-compose.yml runs `flowtarget <service>`, configured by FT_* variables).
#
# The build stage installs the project exactly as the README's quick start does
# on Debian 12 with Python 3.11: `bash scripts/setup.sh` (apt packages, a venv in
# .venv, `pip install -e .`, which compiles capture's fast path with gcc).  The
# runtime stage keeps the venv and the sources and only the shared libraries
# they need, not the compiler and headers.

FROM debian:12 AS build
WORKDIR /opt/flowtarget
COPY . .
# the optional second DPI engine: its cffi binding is compiled here against libndpi-dev (setup.sh
# installs it only with --test, for the test suite; the runtime stage keeps libndpi4.2 alone).
# Bytecode is compiled once here, for the venv and the project, in unchecked-hash mode (the image's sources
# never change): the image sets PYTHONDONTWRITEBYTECODE, so without it every service start, replica and
# restart compiled ~2,000 modules again (1.2-2 s of CPU measured for capture, classify and store's imports)
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libndpi-dev >/dev/null \
 && bash scripts/setup.sh \
 && .venv/bin/flowtarget --help >/dev/null \
 && FT_NDPI_BUILD_DIR=/opt/flowtarget/.ndpi .venv/bin/python -m services.classify.ndpi_engine --build \
 && find . -name __pycache__ -prune -exec rm -rf {} + \
 && .venv/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash .venv/lib flowtarget shared services >/dev/null

FROM debian:12
ARG DEBIAN_FRONTEND=noninteractive
# python3 (3.11, the interpreter the venv points at), libpcap for pypcap, libndpi4.2 for classify's
# second engine (the binding compiled in the build stage links it), ethtool/iproute2 to inspect the
# capture NIC from inside the container
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends python3 libpcap0.8 libndpi4.2 ca-certificates ethtool iproute2 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/flowtarget
COPY --from=build /opt/flowtarget /opt/flowtarget
ENV FT_NDPI_BUILD_DIR=/opt/flowtarget/.ndpi
RUN mkdir -p /var/lib/flowtarget/evidence /var/lib/flowtarget/spool /var/lib/flowtarget/record \
 && flowtarget_check="$(/opt/flowtarget/.venv/bin/python -c 'import pcap, shared.metrics, services.capture.service, services.capture._fastpath; print("ok")')" \
 && test "$flowtarget_check" = ok \
 && ndpi_check="$(/opt/flowtarget/.venv/bin/python -c 'from services.classify.ndpi_engine import load_ndpi; print("ok" if load_ndpi(build_if_missing=False) else "missing")')" \
 && test "$ndpi_check" = ok
ENV PATH=/opt/flowtarget/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
LABEL org.opencontainers.image.title="FlowTarget" \
      org.opencontainers.image.description="Network traffic detection probe: capture, DPI, access logs, alerts, blocking over NATS" \
      org.opencontainers.image.licenses="Apache-2.0"
VOLUME ["/var/lib/flowtarget/evidence", "/var/lib/flowtarget/spool", "/var/lib/flowtarget/record"]
CMD ["flowtarget", "--help"]
