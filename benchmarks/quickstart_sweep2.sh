#!/usr/bin/env bash
# Second recipe sweep: single-turn records, more cases (see quickstart_sweep.sh for the first).
set -u
PY=${PY:-python3}
OUT=${OUT:-/tmp/qs_out}
STEPS=${STEPS:-3000}
EVERY=${EVERY:-500}
export QS_CACHE=/tmp QS=benchmarks/quickstart_recipes.py HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p $OUT
G3="--geom3d 64,64,32:5.25,5.25,7.5"
$PY $QS --kind 2d --n 6000 --img 128 --time-steps 1 --workers 16 >> $OUT/all.log 2>&1 &
$PY $QS --kind 2d --n 2000 --img 128 --time-steps 1 --workers 16 >> $OUT/all.log 2>&1 &
$PY $QS --kind 3d --n 3000 $G3 --time-steps 1 --workers 16 >> $OUT/all.log 2>&1 &
wait
echo "data ready $(date +%T)" >> $OUT/all.log
run() { tag=$1; shift; timeout ${TMO:-290} $PY $QS --device cuda --single --steps $STEPS --eval-every $EVERY --tag $tag --out $OUT/res.jsonl "$@" >> $OUT/all.log 2>&1 & }
D2="--kind 2d --n 6000"
D3="--kind 3d --n 3000 $G3"
run S1_p16 $D2 --patch 16
run S2_p8pool $D2 --patch 8 --pool 2
run S3_p16_lr5e4 $D2 --patch 16 --lr 5e-4
run S4_p16_b32 $D2 --patch 16 --batch 32
run S5_p16_blind $D2 --patch 16 --blind
run S6_p16_n2000 --kind 2d --n 2000 --patch 16
run S7_p16_v4 $D2 --patch 16 --vlayers 4
run S8_p16_closed $D2 --patch 16 --closed-only
run S9_p8pool_closed_b32 $D2 --patch 8 --pool 2 --closed-only --batch 32
run T1_3d_41616 $D3 --vpatch3d 4,16,16
run T2_3d_488pool $D3 --vpatch3d 4,8,8 --pool3d 2,2,2
run T3_3d_blind $D3 --vpatch3d 4,16,16 --blind
run T4_3d_41616_closed $D3 --vpatch3d 4,16,16 --closed-only
wait
echo "all done $(date +%T)" >> $OUT/all.log
