#!/usr/bin/env bash
# Installs Triton 3.7.1 + fla 0.6.0 (+ zstandard, brotli) on a lent GPU machine that cannot download.
# The 198 MB Triton wheel travels in four 50 MB parts (.p1 .. .p4, one per call, carried); /tmp survives
# between calls while the machine is warm. Usage, in each call: bash bench/device_install.sh
set -u
mkdir -p /tmp/parts
for d in .p1 .p2 .p3 .p4; do [ -d "$d" ] && cp -n "$d"/* /tmp/parts/ 2>/dev/null; done
[ -d .whl ] && mkdir -p /tmp/whl && cp -n .whl/*.whl /tmp/whl/ 2>/dev/null
n=$(ls /tmp/parts | wc -l)
echo "triton parts present: $n/4"
if [ "$n" -eq 4 ] && [ ! -f /tmp/site/.done ]; then
  W=/tmp/triton-3.7.1-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
  cat /tmp/parts/part.0 /tmp/parts/part.1 /tmp/parts/part.2 /tmp/parts/part.3 > "$W"
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$W" /tmp/whl/*.whl && touch /tmp/site/.done
fi
if [ -f /tmp/site/.done ]; then
  PYTHONPATH=/tmp/site python3 -c "import triton, fla, zstandard, brotli, torch; print('installed: triton', triton.__version__, 'fla', fla.__version__, 'torch', torch.__version__)"
fi
