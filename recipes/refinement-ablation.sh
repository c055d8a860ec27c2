#!/usr/bin/env bash
# Which refinement policy keeps the emulator on the attractor? The pre-registered ablation of
# results/refinement-ablation/plan.md, resumable: rerun the same command after a kill.
#   bash recipes/refinement-ablation.sh pilot|decisive [--only METHOD...]
# Uses the embedded default bundle, copied to out/ablation-bundle (the plan records its SHA-256).
# Several invocations with --only METHOD... share one study folder (one per core).
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:?pilot or decisive}; shift
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cli=sns-engine; [ -x .venv/bin/sns-engine ] && cli=.venv/bin/sns-engine
bundle=out/ablation-bundle
mkdir -p "$bundle"
for f in config.json emulator.safetensors refiner.safetensors thermalizer.safetensors \
         initial.safetensors; do
    [ -f "$bundle/$f" ] || cp "sns_engine/default_bundle/$f" "$bundle/$f"
done
common=(--preset cpu --bundle "$bundle" --reference-trajectories 8 --reference-snapshots 301
        --reference-spinup 20000 --save-every 10 --trajectory-batch 8)
case "$stage" in
    pilot)
        $cli study kolmogorov "${common[@]}" --out out/ablation-pilot --members 8 \
            --horizon 2000 --windows 4 --methods emulator left_down fix_short \
            'left_down[level_floor=5]' 'left_down[level_floor=10,every=5]' \
            'left_down[long=lagged]' 'left_down[walk=ddim]' thermalizer "$@" ;;
    decisive)
        : "${DECISIVE_METHODS:?set DECISIVE_METHODS to the selection of the pilot (plan.md)}"
        # shellcheck disable=SC2086
        $cli study kolmogorov "${common[@]}" --out out/ablation-decisive --members 16 \
            --horizon 3000 --windows 6 --methods emulator left_down thermalizer \
            $DECISIVE_METHODS "$@" ;;
    *) echo "unknown stage $stage: pilot or decisive" >&2; exit 2 ;;
esac
