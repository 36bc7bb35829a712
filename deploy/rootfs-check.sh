#!/usr/bin/env bash
# Check the Dockerfile's two stages without a Docker engine (as root, on Debian/Ubuntu):
# debootstrap two Debian 12 minbase trees standing in for the `debian:12` image, run the
# build stage's RUN (the README's `bash scripts/setup.sh`) in one, the runtime stage's RUN
# lines in the other with the built /opt/flowtarget copied over, then replay
# samples/sample.pcap through the services inside the runtime tree.
#
#   bash deploy/rootfs-check.sh [WORKDIR]     (default /tmp/flowtarget-rootfs; ~1.2 GB)
#
# Needs debootstrap and network access to the Debian mirror and PyPI.  Set
# FT_ROOTFS_HOST_CA=1 to copy the host's CA bundle into the trees (networks that
# intercept TLS with their own CA).  What it does not check: the docker daemon's own
# behaviour (layers, ENV/WORKDIR handling, networking, capabilities).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/tmp/flowtarget-rootfs}
MIRROR=${FT_ROOTFS_MIRROR:-http://deb.debian.org/debian}
APP=/opt/flowtarget
mkdir -p "$WORK"

stage_runs() {  # the RUN lines of stage $1 (0 = build, -1 = runtime), one per line
  python3 - "$REPO" "$1" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tests.deploy.test_dockerfile import parse_dockerfile
for run in parse_dockerfile((Path(sys.argv[1]) / "Dockerfile").read_text())[int(sys.argv[2])].all("RUN"):
    print(run)
EOF
}

mounted=()
cleanup() { for m in "${mounted[@]}"; do umount "$m" 2>/dev/null || true; done; }
trap cleanup EXIT

tree() {  # a fresh Debian 12 tree at $1
  local root=$1
  [ -x "$root/bin/bash" ] || debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$root.debootstrap.log" 2>&1
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  mount --bind /dev "$root/dev" && mounted+=("$root/dev")
  mount -t proc proc "$root/proc" && mounted+=("$root/proc")
}

ca_env=()
if [ "${FT_ROOTFS_HOST_CA:-0}" = 1 ]; then
  ca_env=(SSL_CERT_FILE=/etc/ssl/host-ca.crt PIP_CERT=/etc/ssl/host-ca.crt REQUESTS_CA_BUNDLE=/etc/ssl/host-ca.crt)
fi

in_tree() {  # run $2 with bash in tree $1, in $APP, with a clean environment
  if [ "${#ca_env[@]}" -gt 0 ]; then mkdir -p "$1/etc/ssl" && cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/host-ca.crt"; fi
  chroot "$1" /usr/bin/env -i PATH="$APP/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    HOME=/root DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 "${ca_env[@]}" \
    /bin/bash -c "mkdir -p $APP && cd $APP && $2"
}

echo "== build stage" >&2
B=$WORK/build
tree "$B"
rm -rf "$B$APP" && mkdir -p "$B$APP"
(cd "$REPO" && git archive HEAD) | tar -x -C "$B$APP"
while IFS= read -r run; do
  echo "RUN $run" >&2
  in_tree "$B" "$run"
done < <(stage_runs 0)

echo "== runtime stage" >&2
R=$WORK/runtime
tree "$R"
mapfile -t runs < <(stage_runs -1)
echo "RUN ${runs[0]}" >&2
in_tree "$R" "${runs[0]}"
rm -rf "$R$APP" && mkdir -p "$R/opt" && cp -a "$B$APP" "$R/opt/"
for run in "${runs[@]:1}"; do
  echo "RUN $run" >&2
  in_tree "$R" "$run"
done

echo "== smoke test: flowtarget analyze samples/sample.pcap inside the runtime tree" >&2
in_tree "$R" "flowtarget analyze samples/sample.pcap" | tee "$WORK/analyze.txt"
grep -q "^  HTTP " "$WORK/analyze.txt" && grep -q "^  TLS " "$WORK/analyze.txt"
du -sh --exclude=proc "$B" "$R" 2>/dev/null || true
echo "rootfs check passed" >&2
