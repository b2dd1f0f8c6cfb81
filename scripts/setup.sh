#!/usr/bin/env bash
# Installs what moe.c needs (Debian packages), then configures and builds it.
# Idempotent: packages already present are not fetched again, and the build is
# incremental.
#   scripts/setup.sh            build/ (Release)
#   scripts/setup.sh --test     also the test-only packages (python3-torch for the oracle,
#                               safetensors from PyPI for the export check: Debian has no package)
#   scripts/setup.sh --san      also build-san/ (AddressSanitizer + UBSan)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
want_san=0
for a in "$@"; do
  case "$a" in
    --test) want_test=1 ;;
    --san) want_san=1 ;;
    *) echo "setup.sh: unknown option $a" >&2; exit 2 ;;
  esac
done

pkgs=(build-essential cmake pkg-config git
      libopenmpi-dev openmpi-bin protobuf-c-compiler libprotobuf-c-dev libhwloc-dev
      check libsubunit-dev libopenblas-openmp-dev libyaml-dev libsodium-dev libxxhash-dev
      coinor-libcbc-dev bible-kjv gnuplot-nox)
[ "$want_test" = 1 ] && pkgs+=(python3 python3-torch python3-numpy python3-pip clang slurm-wlm munge libpmix2)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ "$want_test" = 1 ] && { /usr/bin/python3 -c 'import safetensors' 2>/dev/null || /usr/bin/python3 -m pip install -q --break-system-packages safetensors || echo "setup: safetensors (pip) not installed: it_safetensors checks with numpy only" >&2; }
jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$jobs"
if [ "$want_san" = 1 ]; then
  cmake -S . -B build-san -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOE_SANITIZE=ON >/dev/null
  cmake --build build-san -j"$jobs"
fi
