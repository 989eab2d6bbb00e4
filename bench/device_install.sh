#!/usr/bin/env bash
# Everything the payload and `pgolf run` need on a bare lent GPU machine, which has no network: Triton
# 3.7.1, fla 0.6.0, Ray, pydantic, tenacity, zstandard, brotli, jsonschema (+ the dependencies the image
# lacks), as an installed site tree in /tmp/site (put it first on PYTHONPATH; the image's torch keeps its own
# Triton 3.6, which fla refuses on Hopper: docs/GPU.md).
# A device call carries the checkout (~23 MiB of tracked files) plus at most 64 MiB in all, so the tree
# travels small: the wheels are unpacked here, trimmed (no Blackwell ptxas, proton, cupti static libraries,
# nvdisasm, Ray's Java jars, dashboard UI, rllib, serve and llm: nothing the payload or pgolf imports or
# runs), libtriton.so stripped of its debug
# information (461 -> 180 MB), then tarred (exec bits kept), xz-compressed and split into equal parts of at
# most PART_MB (default 40) MiB, one part per call (2 parts: 76 MiB); /tmp survives between calls while the machine stays warm. (Triton
# imports its AMD backend even on NVIDIA: it stays in.)
#
#   here, with PyPI:   bash bench/device_install.sh pack DEST      # -> DEST/p1 .. DEST/pN (git-ignored;
#                                                                  # WHEEL_DIR=dir: wheels already there)
#   there, each call:  bash bench/device_install.sh [DIR ...]      # collects the parts carried (DIR/p*,
#                                                                  # default .devcarry/parts and .); installs
#                                                                  # once all N have arrived
set -euo pipefail
PY=${PYTHON:-python3}
WHEELS=(triton==3.7.1 flash-linear-attention==0.6.0 fla-core==0.6.0 ray==2.60.0 pydantic==2.14.4
        pydantic-core==2.50.5 annotated-types typing-inspection typing-extensions tenacity==9.2.1
        zstandard==0.25.0 brotli==1.2.1 jsonschema==4.26.0 jsonschema-specifications referencing==0.37.0 rpds-py)
TRIM=(triton/backends/nvidia/bin/ptxas-blackwell triton/_C/libproton.so
      triton/instrumentation/libGPUInstrumentationTestLib.so 'triton/backends/nvidia/lib/cupti/*static*'
      triton/backends/nvidia/lib/cupti/libnvperf_host.so 'triton/backends/nvidia/lib/cupti/libcupti.so.*'
      triton/backends/nvidia/lib/cupti/libpcsamplingutil.so triton/backends/nvidia/bin/nvdisasm 'ray/jars/*'
      ray/dashboard/client/build ray/rllib ray/serve ray/llm)   # nvdisasm: SASS listings only; pgolf's
                                                                # local Ray runs without its dashboard

if [ "${1:-}" = pack ]; then
    dest=${2:?usage: device_install.sh pack DEST}
    tmp=$(mktemp -d)
    mkdir -p "$tmp/w"
    [ -n "${WHEEL_DIR:-}" ] && cp "$WHEEL_DIR"/*.whl "$tmp/w"/   # wheels downloaded before (the same pins)
    [ -n "${WHEEL_DIR:-}" ] || "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$tmp/w" "${WHEELS[@]}"
    mkdir -p "$tmp/site"
    for w in "$tmp"/w/*.whl; do "$PY" -m zipfile -e "$w" "$tmp/site"; done
    (cd "$tmp/site" && rm -rf ${TRIM[@]})
    strip --strip-unneeded "$tmp/site/triton/_C/libtriton.so"
    chmod -R +x "$tmp/site/triton/backends/nvidia/bin" "$tmp/site/ray/core"   # zipfile drops the exec bits
    tar cf - -C "$tmp/site" . | xz -9 -T0 > "$tmp/site.tar"
    rm -rf "$dest"/p[0-9]*
    size=$(stat -c %s "$tmp/site.tar"); max=$((${PART_MB:-40} * 1048576))
    split -b $(( (size + (size + max - 1) / max - 1) / ((size + max - 1) / max) )) -d -a 2 "$tmp/site.tar" "$tmp/part."
    n=$(ls "$tmp"/part.* | wc -l)
    i=1
    for f in "$tmp"/part.*; do mkdir -p "$dest/p$i"; mv "$f" "$dest/p$i/site.tar.part$(printf %02d $((i - 1)))"; i=$((i + 1)); done
    sha=$(sha256sum "$tmp/site.tar" | cut -c1-64)
    echo "$n $sha" > "$dest/p1/site.tar.manifest"
    echo "$(ls "$tmp"/w | wc -l) wheels, $(du -sh "$tmp/site" | cut -f1) unpacked, $n parts, sha256 $sha"; du -sh "$dest"/p[0-9]*
    rm -rf "$tmp"
    exit 0
fi

P=/tmp/pgolf_parts
mkdir -p "$P"
for d in "${@:-.devcarry/parts}"; do
    for f in "$d"/p[0-9]*/site.tar.*; do [ -f "$f" ] && cp -n "$f" "$P"/; done
done
have=$(ls "$P" | grep -c 'part' || true)
want=$(cut -d' ' -f1 "$P/site.tar.manifest" 2>/dev/null || echo '?')
echo "parts present: $have/$want"
if [ "$have" = "$want" ] && [ ! -f /tmp/site/.done ]; then
    cat "$P"/site.tar.part* > /tmp/site.tar
    [ "$(sha256sum /tmp/site.tar | cut -c1-64)" = "$(cut -d' ' -f2 "$P/site.tar.manifest")" ] \
        || { echo "site.tar: sha256 mismatch"; exit 1; }
    mkdir -p /tmp/site && "$PY" -c "import tarfile; tarfile.open('/tmp/site.tar', 'r:xz').extractall('/tmp/site', filter='tar')" \
        && rm /tmp/site.tar
    touch /tmp/site/.done
fi
if [ -f /tmp/site/.done ]; then
    PYTHONPATH=/tmp/site "$PY" -c "import triton, fla, torch, ray, pydantic, tenacity, zstandard, brotli, jsonschema
print('in /tmp/site: triton', triton.__version__, 'fla', fla.__version__, 'ray', ray.__version__, '| torch', torch.__version__)"
fi
