#!/usr/bin/env bash
# Recipe sweep for medvl quickstart on a machine with many cores and a GPU: accuracy vs optimizer
# steps (GPU, fp32, TF32 off) for several recipes in parallel, plus per-step CPU time (2 threads).
# Usage: OUT=dir STEPS=1600 bash benchmarks/quickstart_sweep.sh
set -u
PY=${PY:-python3}
OUT=${OUT:-/tmp/qs_out}
STEPS=${STEPS:-1600}
EVERY=${EVERY:-200}
export QS_CACHE=/tmp QS=benchmarks/quickstart_recipes.py HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p $OUT
# data caches first (all cores)
$PY $QS --kind 2d --n 2000 --img 128 --time-steps 1 --workers 16 >> $OUT/all.log 2>&1 &
$PY $QS --kind 2d --n 2000 --img 256 --time-steps 1 --workers 16 >> $OUT/all.log 2>&1 &
$PY $QS --kind 3d --n 1500 --time-steps 1 --workers 16 >> $OUT/all.log 2>&1 &
wait
echo "data ready $(date +%T)" >> $OUT/all.log
run() { tag=$1; shift; timeout ${TMO:-420} $PY $QS --device cuda --steps $STEPS --eval-every $EVERY --tag $tag --out $OUT/res.jsonl "$@" >> $OUT/all.log 2>&1 & }
D2="--kind 2d --n 2000"
D3="--kind 3d --n 1500"
run A_p16 $D2 --patch 16
run B_p16_single $D2 --patch 16 --single
run C_p8pool $D2 --patch 8 --pool 2
run D_p8pool_lr1e3 $D2 --patch 8 --pool 2 --lr 1e-3
run E_p8mlp $D2 --patch 8
run F_p8pool_big $D2 --patch 8 --pool 2 --vdim 192 --vlayers 4
run G_img256_p16pool $D2 --img 256 --patch 16 --pool 2
run H_p8pool_blind $D2 --patch 8 --pool 2 --blind
run I_p8pool_b32 $D2 --patch 8 --pool 2 --batch 32
run J_p8pool_lr6e4 $D2 --patch 8 --pool 2 --lr 6e-4
run K3_p488_pool222 $D3 --vpatch3d 4,8,8 --pool3d 2,2,2
run L3_p41616 $D3 --vpatch3d 4,16,16
run M3_blind $D3 --vpatch3d 4,8,8 --pool3d 2,2,2 --blind
run N3_p288_pool422 $D3 --vpatch3d 2,8,8 --pool3d 4,2,2
# per-step CPU time, 2 threads, sequential
t() { tag=$1; shift; $PY $QS --time-steps 10 --threads 2 --tag T_$tag "$@" >> $OUT/timing.log 2>&1; }
t A $D2 --patch 16; t B $D2 --patch 16 --single; t C $D2 --patch 8 --pool 2; t E $D2 --patch 8
t F $D2 --patch 8 --pool 2 --vdim 192 --vlayers 4; t G $D2 --img 256 --patch 16 --pool 2
t K3 $D3 --vpatch3d 4,8,8 --pool3d 2,2,2; t L3 $D3 --vpatch3d 4,16,16; t N3 $D3 --vpatch3d 2,8,8 --pool3d 4,2,2
echo "timing done $(date +%T)" >> $OUT/all.log
wait
echo "all done $(date +%T)" >> $OUT/all.log
