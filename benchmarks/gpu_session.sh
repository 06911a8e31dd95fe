#!/usr/bin/env bash
# The one prepared device run for a session that is lent a GPU (docs/results.md, "On a GPU"):
# the gpu part of the suite, then an LFW search at 8 px without the CPU pins (the guide's DSR
# sizes among the searched ones), sized to fit one 10-minute command, and `evaluate` of its best
# trial under XXS and XS. Not yet run: no session so far had a GPU.
#
# Here, in the project root, once (both land in the git-ignored .device/):
#   bash ../shared/tools/device-bundle.sh                      # ray + optuna, about 37 MB
#   mkdir -p .device/faces && cp -r ../shared/faces/lfw ../shared/faces/edgeface_x*_q.pt .device/faces/
# Then one device `run` with carry [".device"] and timeout_s 590:
#   bash benchmarks/gpu_session.sh
# Everything it measures lands in $OUT (the device tool brings it back).
set -uo pipefail
out=${OUT:-/tmp/gpu_session}
faces=${FACES:-.device/faces}
mkdir -p "$out" /tmp/site
tar xJf .device/bundle.tar.xz -C /tmp/site
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
python -c "import torch, ray, optuna; print(torch.__version__, ray.__version__, optuna.__version__)" \
    > "$out/versions.txt" 2>&1

# 1. The gpu part: one trial and 1, 2, 4, 8 packed trials, images/s and the matmul share.
timeout 150 python -m benchmarks.run --only gpu --device cuda --json "$out/gpu.json" \
    > "$out/gpu.log" 2>&1

# 2. An LFW search at 8 px on the GPU, the full set every epoch, width and depth searched, four
#    trials at a time on the one GPU; the held-out XS validates beside XXS.
timeout 330 python -m tune_dsr.search --space recognition_first --gpus 1 --gpus-per-trial 0.25 \
    --data-root "$faces/lfw" --vlr-size 8 --edgeface "$faces/edgeface_xxs_q.pt" \
    --val-edgeface "$faces/edgeface_xs_q.pt" --objectives val_margin_gain_min \
    --perceptual-weights random --set lambda_perceptual=0 --num-samples 12 --max-epochs 16 \
    --grace-period 4 --reduction-factor 2 --patience 6 --confirm 0 --max-concurrent 4 \
    --storage-path "$out/tune" --name lfw8-gpu --seed 0 > "$out/search.log" 2>&1

# 3. Its best trial on the test persons, under XXS (trained against) and XS (held out).
best=$(python -c "from tune_dsr import load_experiment; print(load_experiment('$out/tune/lfw8-gpu').best_checkpoint())" 2>>"$out/search.log")
if [ -n "$best" ]; then
    timeout 60 python -m tune_dsr.evaluate --data-root "$faces/lfw" --dsr "$best" --device cuda \
        --edgeface "$faces/edgeface_xxs_q.pt" "$faces/edgeface_xs_q.pt" --json \
        > "$out/evaluate.json" 2> "$out/evaluate.log"
fi
rm -rf "$out/tune/lfw8-gpu"/trial_*/checkpoint_*  # the bulk; best.pt and the metrics stay
ls -la "$out"
