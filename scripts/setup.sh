#!/usr/bin/env bash
# Set up FlowTarget on Debian 12 (as root): system packages, a virtual
# environment in .venv and the project installed into it (editable).
#   bash scripts/setup.sh          runtime only
#   bash scripts/setup.sh --test   plus what the test suite needs (lab tools, victoria-metrics, test extras)
set -euo pipefail
cd "$(dirname "$0")/.."
want_tests=0
[ "${1:-}" = "--test" ] && want_tests=1

pkgs=(libpcap-dev python3-venv python3-dev gcc)
if [ "$want_tests" = 1 ]; then
  # real peers and servers for the tests: InfluxDB v2 write API (victoria-metrics),
  # network-namespace lab (iproute2, ethtool, tcpdump), DNS/HTTP/SSH peers
  pkgs+=(victoria-metrics iproute2 ethtool tcpdump dnsmasq-base dnsutils curl openssh-server openssh-client openssl
         libndpi-dev    # the optional second DPI engine is built and tested against it
         libndpi-bin    # ndpiReader: `flowtarget bench capture --ndpi` compares capture with it
         chromium chromium-driver)   # the web console's tests drive a real headless browser
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if [ "$want_tests" = 1 ]; then
  .venv/bin/python -m pip install -q -e '.[test]'
else
  .venv/bin/python -m pip install -q -e .
fi
# the project's own bytecode: an editable install leaves it to the first import, which cannot write it
# where PYTHONDONTWRITEBYTECODE is set (as in the image), so every service start would compile ~45 modules
# again (0.2-0.3 s of CPU each start); an edited module is recompiled in memory as before
.venv/bin/python -m compileall -q -j 0 flowtarget shared services >/dev/null
echo "FlowTarget installed in $(pwd)/.venv" >&2
