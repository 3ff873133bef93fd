# First command on a lent GPU: the smoke recipe end to end on CUDA (fit with bf16 chosen by
# the probe rule, final selection, evaluate, translate), then the speed bench with --device cuda.
#   device run: bash bench/gpu_check.sh     (carry .whl and .gpu)
source bench/gpu_env.sh
set -x
R=/tmp/runs
rm -rf $R/smoke  # a warm machine keeps /tmp: never report an earlier run
timeout 150 python3 -m pipeline fit --config configs/smoke.yaml --data.path $DATA --run.root $R \
    --trainer.precision null 2>&1 | grep -v Warning | tail -25
timeout 60 python3 -m pipeline evaluate --ckpt $R/smoke/checkpoints/final.ckpt --data $DATA --split test \
    --out $R/smoke/eval-test 2>&1 | tail -3
echo "Ein Hund rennt durch den Schnee." | timeout 60 python3 -m pipeline translate --ckpt $R/smoke/checkpoints/final.ckpt
cp $R/smoke/results.json $OUT/smoke-results.json 2>/dev/null
timeout ${BENCH_S:-240} python3 -m bench.run --device cuda --quick --data $DATA --out $OUT/bench-gpu-quick.json 2>&1 \
    | grep -v Warning | tail -30
# Where a GPU step's time goes, ours beside MarianMT's (kernel launches counted): train_recipe's puzzle.
timeout ${PROFILE_S:-150} python3 -m bench.profile --device cuda --marian --data $DATA --out $OUT/profile-gpu.txt 2>&1 \
    | grep -v Warning | tail -5
