#!/usr/bin/env bash
# Everything the payload and `pgolf run` need on a bare lent GPU machine, which has no network:
#   - Triton 3.7.1 + fla 0.6.0 into /tmp/site (put it first on PYTHONPATH; the image's torch keeps its own
#     Triton 3.6, which fla refuses on Hopper: docs/GPU.md);
#   - Ray, pydantic, tenacity, zstandard, brotli, jsonschema (+ the dependencies the image lacks) into the
#     image's python3 (pip --no-index --find-links).
# The wheels travel as one tar split into ~55 MB parts, one part per device call (a call carries at most
# 64 MiB); /tmp survives between calls while the machine stays warm.
#
#   here, with PyPI:   bash bench/device_install.sh pack /work/main     # -> /work/main/.p1 .. .p5 (git-ignored)
#   there, each call:  bash bench/device_install.sh                     # collects the parts carried (.p*);
#                                                                       # installs once all have arrived
set -euo pipefail
PY=${PYTHON:-python3}
WHEELS=(triton==3.7.1 flash-linear-attention==0.6.0 fla-core==0.6.0 ray==2.60.0 pydantic==2.14.4
        pydantic-core==2.50.5 annotated-types typing-inspection typing-extensions tenacity==9.2.1
        zstandard==0.25.0 brotli==1.2.1 jsonschema==4.26.0 jsonschema-specifications referencing==0.37.0 rpds-py)

if [ "${1:-}" = pack ]; then
    dest=${2:?usage: device_install.sh pack DEST_REPO}
    tmp=$(mktemp -d)
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$tmp/w" "${WHEELS[@]}"
    tar cf "$tmp/wheels.tar" -C "$tmp/w" .
    rm -rf "$dest"/.p[0-9]*
    split -n 5 -d -a 1 "$tmp/wheels.tar" "$tmp/part."
    i=1
    for f in "$tmp"/part.*; do mkdir -p "$dest/.p$i"; mv "$f" "$dest/.p$i/wheels.tar.part$((i - 1))"; i=$((i + 1)); done
    echo "$(ls "$tmp"/w | wc -l) wheels, 5 parts, sha256 $(sha256sum "$tmp/wheels.tar" | cut -c1-64)" \
        > "$dest/.p1/wheels.tar.manifest"
    sha256sum "$tmp/wheels.tar" | cut -c1-64 > "$dest/.p1/wheels.tar.sha256"
    cat "$dest/.p1/wheels.tar.manifest"; du -sh "$dest"/.p[0-9]*
    rm -rf "$tmp"
    exit 0
fi

P=/tmp/pgolf_parts W=/tmp/pgolf_wheels
mkdir -p "$P"
for d in .p[0-9]*; do [ -d "$d" ] && cp -n "$d"/wheels.tar.* "$P"/ 2>/dev/null || true; done
have=$(ls "$P" | grep -c 'part' || true)
echo "wheel parts present: $have/5"
if [ "$have" -eq 5 ] && [ ! -f /tmp/site/.done ]; then
    cat "$P"/wheels.tar.part{0,1,2,3,4} > /tmp/wheels.tar
    [ "$(sha256sum /tmp/wheels.tar | cut -c1-64)" = "$(cat "$P/wheels.tar.sha256")" ] || { echo "wheels.tar: sha256 mismatch"; exit 1; }
    mkdir -p "$W" && tar xf /tmp/wheels.tar -C "$W" && rm /tmp/wheels.tar
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
        "$W"/triton-3.7.1-*.whl "$W"/flash_linear_attention-*.whl "$W"/fla_core-*.whl
    # ray without its dependency list (its aiohttp pins are for the dashboard; the image has what the core
    # imports); the rest with their dependencies, from the wheels or the image
    "$PY" -m pip install -q --no-index --no-deps --find-links "$W" ray==2.60.0
    "$PY" -m pip install -q --no-index --find-links "$W" pydantic tenacity zstandard brotli jsonschema
    touch /tmp/site/.done
fi
if [ -f /tmp/site/.done ]; then
    PYTHONPATH=/tmp/site "$PY" -c "import triton, fla, torch; print('in /tmp/site: triton', triton.__version__, 'fla', fla.__version__, '| torch', torch.__version__)"
    "$PY" -c "import ray, pydantic, tenacity, zstandard, brotli, jsonschema; print('in the image: ray', ray.__version__, 'pydantic', pydantic.VERSION)"
fi
