#!/usr/bin/env bash
# Recipe sweeps for medvl quickstart on a machine with many cores and a GPU: accuracy vs optimizer
# steps (GPU, fp32, TF32 off) for several recipes in parallel (benchmarks/quickstart_recipes.py).
# The two sweeps of 2026-11-27 (results/quickstart_sweep1_h200.jsonl, quickstart_sweep2_h200.jsonl):
#   SWEEP=1: first recipes (2D patch/pool/lr/size variants, 3D patch grids) + per-step CPU time
#   SWEEP=2: single-turn records, more cases, 3D at the quickstart geometry
# Usage: SWEEP=1 OUT=dir STEPS=1600 bash benchmarks/quickstart_sweep.sh
set -u
PY=${PY:-python3}
OUT=${OUT:-/tmp/qs_out}
SWEEP=${SWEEP:-1}
export QS_CACHE=/tmp QS=benchmarks/quickstart_recipes.py HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p $OUT
data() { $PY $QS --time-steps 1 --workers 16 "$@" >> $OUT/all.log 2>&1 & }  # data caches first (all cores)
run() { tag=$1; shift; timeout $TMO $PY $QS --device cuda --steps $STEPS --eval-every $EVERY --tag $tag --out $OUT/res.jsonl "$@" >> $OUT/all.log 2>&1 & }

if [ "$SWEEP" = 1 ]; then
  STEPS=${STEPS:-1600}; EVERY=${EVERY:-200}; TMO=${TMO:-420}
  D2="--kind 2d --n 2000"
  D3="--kind 3d --n 1500"
  data $D2 --img 128; data $D2 --img 256; data $D3
  wait
  echo "data ready $(date +%T)" >> $OUT/all.log
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
elif [ "$SWEEP" = 2 ]; then
  STEPS=${STEPS:-3000}; EVERY=${EVERY:-500}; TMO=${TMO:-290}
  D2="--kind 2d --n 6000 --single"
  G3="--geom3d 64,64,32:5.25,5.25,7.5"
  D3="--kind 3d --n 3000 --single $G3"
  data --kind 2d --n 6000 --img 128; data --kind 2d --n 2000 --img 128; data --kind 3d --n 3000 $G3
  wait
  echo "data ready $(date +%T)" >> $OUT/all.log
  run S1_p16 $D2 --patch 16
  run S2_p8pool $D2 --patch 8 --pool 2
  run S3_p16_lr5e4 $D2 --patch 16 --lr 5e-4
  run S4_p16_b32 $D2 --patch 16 --batch 32
  run S5_p16_blind $D2 --patch 16 --blind
  run S6_p16_n2000 --kind 2d --n 2000 --single --patch 16
  run S7_p16_v4 $D2 --patch 16 --vlayers 4
  run S8_p16_closed $D2 --patch 16 --closed-only
  run S9_p8pool_closed_b32 $D2 --patch 8 --pool 2 --closed-only --batch 32
  run T1_3d_41616 $D3 --vpatch3d 4,16,16
  run T2_3d_488pool $D3 --vpatch3d 4,8,8 --pool3d 2,2,2
  run T3_3d_blind $D3 --vpatch3d 4,16,16 --blind
  run T4_3d_41616_closed $D3 --vpatch3d 4,16,16 --closed-only
else
  echo "unknown SWEEP=$SWEEP; valid choices: 1, 2" >&2
  exit 2
fi
wait
echo "all done $(date +%T)" >> $OUT/all.log
