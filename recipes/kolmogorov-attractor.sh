#!/usr/bin/env bash
# Does SNS keep a drifting emulator on the attractor? The CPU-scale experiment of
# results/kolmogorov-attractor/, resumable: rerun the same command after a kill.
#   bash recipes/kolmogorov-attractor.sh [out]        (default out: out/attractor)
# Needs the default bundle's training data, out/default/data.zarr (README, "Reproducing the
# embedded default bundle", first command): the calibrated threshold reads its held-out frames.
# Uses the embedded emulator, refiner and Thermalizer; runs the study (solver reference and
# control, plan with the pre-registered criteria, six methods, evaluation, report). Several
# invocations with --only METHOD... (appended to the study command) share the rollouts.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-out/attractor}
data=out/default/data.zarr
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
[ -d "$data" ] || { echo "missing $data: run the README's data command first" >&2; exit 2; }
mkdir -p "$out/bundle"
for f in config.json emulator.safetensors refiner.safetensors thermalizer.safetensors \
         initial.safetensors; do
    [ -f "$out/bundle/$f" ] || cp "sns_engine/default_bundle/$f" "$out/bundle/$f"
done
sns-engine study kolmogorov --preset cpu --out "$out/study" --bundle "$out/bundle" \
    --calibration-data "$data" --reference-trajectories 8 --reference-snapshots 301 \
    --reference-spinup 20000 --members 16 --horizon 3000 --save-every 10 --windows 6 \
    --trajectory-batch 8 --methods emulator left_down 'thermalizer[match=left_down]' \
    'left_down[threshold=calibrated]' thermalizer fix_short "$@"
