#!/usr/bin/env bash
# Stage 2 of the refinement ablation (results/refinement-ablation/plan.md): the models that did not
# exist when the plan was written. Resumable: rerun the same command after a kill.
#   bash recipes/refinement-stage2.sh refiner       # the shipped refiner trained on to 2x, then 4x
#   bash recipes/refinement-stage2.sh thermalizer   # the shipped Thermalizer trained on to 8 000 steps
#   bash recipes/refinement-stage2.sh attractor [emulator|refiner]  # a bundle trained on attractor
#                                                   # data, both models or one (stage2-plan-7.md)
#   bash recipes/refinement-stage2.sh walk-bias     # the walk-bias table of each finished bundle
#   bash recipes/refinement-stage2.sh pilot refiner-2x|refiner-4x|thermalizer-8k|attractor [--only METHOD...] [--quiet]
#                                                   # its pilot arms (stage2-plan.md, -5.md, -7.md)
#   bash recipes/refinement-stage2.sh decisive refiner-2x|refiner-4x|thermalizer-8k [--only METHOD...] [--quiet]
#                                                   # its decisive arms (stage2-plan-5.md, -8.md); the
#                                                   # refiner-2x study makes the solver control
# Needs the default bundle's training data, out/default/data.zarr (README, "Reproducing the embedded
# default bundle", first command) and, for walk-bias, out/heldout-12345.zarr (results/walk-bias).
# Each training starts from the embedded bundle's model (--init-from: its weights at its step count,
# fresh optimizer moments) with the hyper-parameters it was trained with; the 2x bundle is copied
# aside (out/stage2/refiner-2x) before the 4x run goes on from it in out/stage2/refiner-4x. The
# attractor bundle (out/stage2/attractor) is trained from scratch, as the embedded one was, on data
# spun up as long as the studies' reference (out/attractor-train/data.zarr, made here).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cli=sns-engine; [ -x .venv/bin/sns-engine ] && cli=.venv/bin/sns-engine
py=python3; [ -x .venv/bin/python ] && py=.venv/bin/python
data=out/default/data.zarr
[ -d "$data" ] || { echo "missing $data: run the README's data command first" >&2; exit 2; }
hyper=(--data "$data" --batch-size 16 --lr 5e-4 --level-bias 0.01 --val-every 200
       --checkpoint-every 50 --quiet)

bundle() {  # a copy of the embedded bundle to train into
    mkdir -p "$1"
    for f in config.json emulator.safetensors refiner.safetensors thermalizer.safetensors \
             initial.safetensors; do
        [ -f "$1/$f" ] || cp "sns_engine/default_bundle/$f" "$1/$f"
    done
}

train() {  # model bundle steps: start from the embedded model, or resume the run's checkpoint
    local model=$1 out=$2 steps=$3
    bundle "$out"
    if [ -f "$out/train/$model.json" ]; then
        $cli train "$model" --out "$out" --steps "$steps" "${hyper[@]}" --resume
    else
        $cli train "$model" --out "$out" --steps "$steps" "${hyper[@]}" \
            --init-from sns_engine/default_bundle --overwrite
    fi
}

study() {  # name out members horizon windows [STORE:FOLDER...] [study options]: a study of
           # out/stage2/NAME's bundle with $methods, rolling out $only; each STORE (reference,
           # control) copied from FOLDER/data rather than generated again
    local name=$1 out=$2 members=$3 horizon=$4 windows=$5; shift 5
    mkdir -p "$out/data"
    while [[ ${1:-} == *:* ]]; do
        [ -d "$out/data/${1%%:*}.zarr" ] || cp -r "${1#*:}/data/${1%%:*}.zarr" "$out/data/"
        shift
    done
    $cli study kolmogorov --preset cpu --bundle "out/stage2/$name" --reference-trajectories 8 \
        --reference-snapshots 301 --reference-spinup 20000 --save-every 10 --trajectory-batch 8 \
        --members "$members" --horizon "$horizon" --windows "$windows" --out "$out" \
        --methods "${methods[@]}" --only "${only[@]}" "$@"   # a later --only wins
}

finished() {  # bundle model steps: whether the bundle's model has that many steps
    $py -c "import json,sys; m=json.load(open('$1/config.json'))['models']['$2']; sys.exit(m.get('step') != $3)"
}

case "${1:?refiner, thermalizer, attractor, walk-bias, pilot or decisive}" in
    refiner)
        finished out/stage2/refiner-2x refiner 16000 2>/dev/null || train refiner out/stage2/refiner-2x 16000
        [ -d out/stage2/refiner-4x ] || { rm -rf out/stage2/.refiner-4x && cp -r out/stage2/refiner-2x out/stage2/.refiner-4x &&
            mv out/stage2/.refiner-4x out/stage2/refiner-4x; }
        $cli train refiner --out out/stage2/refiner-4x --steps 32000 "${hyper[@]}" --resume ;;
    thermalizer)
        train thermalizer out/stage2/thermalizer-8k 8000 ;;
    attractor)
        models=("${@:2}"); [ ${#models[@]} -gt 0 ] || models=(emulator refiner)
        for model in "${models[@]}"; do [[ $model == emulator || $model == refiner ]] ||
            { echo "attractor trains emulator or refiner, not $model" >&2; exit 2; }; done
        $cli data kolmogorov --preset cpu --trajectories 32 --snapshots 800 --seed 0 \
            --set spinup_steps=20000 --out out/attractor-train/data.zarr --quiet
        for model in "${models[@]}"; do  # the embedded bundle's commands, from scratch, resumable
            steps=8000 options=(--batch-size 16 --level-bias 0.01 --val-every 200)
            [ "$model" = emulator ] && steps=1000 options=(--batch-size 8 --unroll 2 --val-every 100)
            [ -f "out/stage2/attractor/train/$model.json" ] && options+=(--resume)
            finished out/stage2/attractor "$model" "$steps" 2>/dev/null ||
                $cli train "$model" --data out/attractor-train/data.zarr --out out/stage2/attractor \
                    --steps "$steps" --lr 5e-4 --checkpoint-every 50 --quiet "${options[@]}"
        done ;;
    walk-bias)
        for b in refiner-2x:16000 refiner-4x:32000; do
            name=${b%%:*}
            finished "out/stage2/$name" refiner "${b##*:}" 2>/dev/null || { echo "$name: not trained yet"; continue; }
            [ -f "results/walk-bias/$name/walk-bias.json" ] ||
                $py results/walk-bias/run.py out/heldout-12345.zarr "results/walk-bias/$name" "out/stage2/$name"
        done
        # stage2-plan-7.md: the attractor bundle and the shipped one on held-out attractor frames
        # (results/walk-bias/README.md makes out/attractor-12345.zarr)
        for b in attractor-bundle:out/stage2/attractor shipped-bundle:sns_engine/default_bundle; do
            dest=results/walk-bias/attractor-frames-${b%%:*}
            finished out/stage2/attractor refiner 8000 2>/dev/null || { echo "attractor: not trained yet"; break; }
            [ -f "$dest/walk-bias.json" ] || $py results/walk-bias/run.py out/attractor-12345.zarr "$dest" "${b#*:}" --short
        done ;;
    pilot)
        name=${2:?refiner-2x, refiner-4x, thermalizer-8k or attractor}; shift 2
        case "$name" in
            refiner-2x) methods=(emulator left_down 'left_down[long=lagged]'); only=("${methods[@]}") ;;
            refiner-4x) methods=(emulator left_down 'left_down[long=lagged,level_floor=2]')
                        only=("${methods[@]}") ;;
            attractor) methods=(emulator left_down 'left_down[long=lagged]'); only=("${methods[@]}") ;;
            # left_down is listed for match= to measure; its arm is the stage-1 pilot's (same
            # refiner), so it is not rolled out here
            thermalizer-8k) methods=(emulator left_down thermalizer 'thermalizer[match=left_down]')
                            only=(emulator thermalizer 'thermalizer[match=left_down]') ;;
            *) echo "no stage-2 pilot for $name: refiner-2x, refiner-4x, thermalizer-8k or attractor" >&2; exit 2 ;;
        esac
        # the pilot's reference and solver control (same seeds, so the same initial states)
        [ -d out/ablation-pilot/data/control.zarr ] ||
            bash recipes/refinement-ablation.sh pilot --only emulator --quiet
        study "$name" "out/stage2-pilot-$name" 8 2000 4 reference:out/ablation-pilot \
            control:out/ablation-pilot "$@" ;;
    decisive)
        name=${2:?refiner-2x, refiner-4x or thermalizer-8k}; shift 2
        case "$name" in
            refiner-2x) methods=(emulator 'left_down[level_floor=3]' 'left_down[long=lagged,level_floor=2]')
                        control=() ;;   # this study makes the 16-member control
            # stage2-plan-8.md: the 4x pilot's best arm and a deeper floor, the same control
            refiner-4x) methods=(emulator 'left_down[long=lagged,level_floor=2]'
                                 'left_down[long=lagged,level_floor=5]')
                        control=(control:out/stage2-decisive-refiner-2x) ;;
            thermalizer-8k) methods=(emulator thermalizer); control=(control:out/stage2-decisive-refiner-2x) ;;
            *) echo "no stage-2 decisive run for $name: refiner-2x, refiner-4x or thermalizer-8k" >&2; exit 2 ;;
        esac
        only=("${methods[@]}")
        [ ${#control[@]} -eq 0 ] || [ -f out/stage2-decisive-refiner-2x/reports/solver.json ] || {
            echo "run the refiner-2x decisive study first (it makes the control)" >&2; exit 2; }
        [ -d out/ablation-pilot/data/reference.zarr ] ||
            bash recipes/refinement-ablation.sh pilot --only emulator --quiet
        study "$name" "out/stage2-decisive-$name" 16 3000 6 reference:out/ablation-pilot \
            "${control[@]}" "$@" ;;
    *) echo "unknown stage $1: refiner, thermalizer, attractor, walk-bias, pilot or decisive" >&2; exit 2 ;;
esac
