#!/usr/bin/env bash
# The GPU kit: every device check of docs/benchmarks.md ("GPU kit") in one command.
#
#   scripts/gpu_kit.sh bundle [DIR]     here: download the wheels the device lacks (cp312, manylinux x86-64),
#                                       LZMA-repack them and check bundle + working tree < 64 MiB (.gpu_bundle)
#   scripts/gpu_kit.sh check [DIR]      here: only the 64 MiB check
#   scripts/gpu_kit.sh run [OUT]        on the device: install the bundle into a private folder (the machine's
#                                       torch is used, never reinstalled), install this package from the
#                                       working tree, run the steps; results in OUT (default $OUT)
#   scripts/gpu_kit.sh --dry-run OUT    here: the same steps at tiny sizes on CPU, in the local environment
#
# Environment: KIT_BUNDLE (wheel folder, default .gpu_bundle), KIT_WORK (scratch, default /tmp/mosmos_gpu_kit),
# KIT_TOTAL_S (seconds for the whole command; run: 450, dry run: 3600), KIT_STEPS (comma-separated subset of
# env,text_model,overhead_3d_fullres,overhead_2d,pretrain_2d,pretrain_3d,e2e), KIT_PYTHON (default python3),
# KIT_INSTALL=1 (dry run: install from KIT_BUNDLE first, as on the device; build one for this Python with
# KIT_BUNDLE=DIR scripts/gpu_kit.sh bundle DIR --python-version 3.11).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
PY=$(command -v "${KIT_PYTHON:-python3}") || { echo "gpu_kit: no ${KIT_PYTHON:-python3} on PATH" >&2; exit 2; }
BUNDLE=${KIT_BUNDLE:-$REPO/.gpu_bundle}
WORK=${KIT_WORK:-/tmp/mosmos_gpu_kit}

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  bundle) exec "$PY" -m benchmarks.gpu.bundle build "${1:-$BUNDLE}" "${@:2}" ;;
  check) exec "$PY" -m benchmarks.gpu.bundle check "${1:-$BUNDLE}" ;;
  run) mode=gpu; outdir=${1:-${OUT:-}} ;;
  --dry-run|dry-run) mode=dry; outdir=${1:-} ;;
  *) usage ;;
esac
[ -n "$outdir" ] || { echo "gpu_kit: give an output folder (on the device: \$OUT)" >&2; exit 2; }
t0=$(date +%s)
mkdir -p "$outdir" "$WORK"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg

# the install: always on the device; in a dry run only with KIT_INSTALL=1 (e.g. from a cp311 bundle, to test it here)
if [ "$mode" = gpu ] || [ "${KIT_INSTALL:-0}" = 1 ]; then
  site=$WORK/site
  compgen -G "$BUNDLE/*.whl" >/dev/null || {
    echo "gpu_kit: no wheels in $BUNDLE; build them with 'scripts/gpu_kit.sh bundle' and carry .gpu_bundle" >&2; exit 2; }
  "$PY" -c "import lzma" || { echo "gpu_kit: $PY has no lzma module, and the bundle's wheels are LZMA-packed" >&2; exit 2; }
  rm -rf "$site"
  # --no-deps: exactly the bundle's wheels, in a folder put in front of the machine's site-packages (torch stays)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
    --target "$site" "$BUNDLE"/*.whl
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir \
    --disable-pip-version-check --target "$site" "$REPO"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PATH="$site/bin:$PATH"
  "$PY" - "$BUNDLE" "$site" "$(( $(date +%s) - t0 ))" > "$WORK/install.json" <<'PYEOF'
import json, sys
from pathlib import Path
bundle, site, seconds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
wheels = {p.name: p.stat().st_size for p in sorted(bundle.glob("*.whl"))}
print(json.dumps({"bundle": str(bundle), "wheels": wheels, "bundle_mib": round(sum(wheels.values()) / 2 ** 20, 2),
                  "site": site, "seconds": seconds, "python": sys.executable}))
PYEOF
  echo "[gpu_kit] installed $(ls "$BUNDLE"/*.whl | wc -l) wheels + nnunet-mosmos into $site in $(( $(date +%s) - t0 )) s" >&2
fi

total=${KIT_TOTAL_S:-$([ "$mode" = gpu ] && echo 450 || echo 3600)}
budget=$(( total - ($(date +%s) - t0) ))
exec "$PY" -m benchmarks.gpu.kit run --mode "$mode" --out "$outdir" --work "$WORK" --budget-s "$budget" \
  ${KIT_STEPS:+--steps "$KIT_STEPS"} --python "$PY"
