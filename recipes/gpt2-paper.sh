#!/usr/bin/env bash
# The paper's two-stage GPT-2 (124M) recipe (Leroux et al. 2025; hyper-parameters from the published configs,
# docs/bibliography.md, the published code [C]):  GPT-2 -> linear hardware fine-tune -> adaptation -> nonlinear fine-tune,
# then lm-evaluation-harness on the paper's tasks.
#
# Data: OpenWebText (hf:Skylion007/openwebtext), GPT-2 BPE, context 1024, global batch 1920 x 1024 tokens,
# AdamW (0.9, 0.95), weight decay 0.1, clip 1.0, lr 6e-4, warm-up 2000, cosine to 6e-5 over 600,000 iterations
# (so effectively constant here), bf16 autocast for the digital layers, Q/K/V/out = 16/8/8/32 levels, lambda 1.6e-4.
# Iterations: 3,000 linear + 13,000 nonlinear (the code's README; the figure script suggests 3,000 + 2,000-6,000).
#
# Expected cost: the paper reports ~4 days on 8x H100 80 GB for everything (~16 days on 8x RTX 4090).  On CPU this is
# out of reach (one 1920 x 1024 batch alone is ~2M tokens).  Usage:
#   NPROC=8 recipes/gpt2-paper.sh [RUN_DIR]          (NPROC processes on one node; see README for multi-node)
set -euo pipefail
RUN=${1:-runs/gpt2-paper}
NPROC=${NPROC:-8}
MODEL=${MODEL:-gpt2}
DATA=${DATA:-hf:Skylion007/openwebtext:train}
HERE=$(cd "$(dirname "$0")" && pwd)
LINEAR_STEPS=${LINEAR_STEPS:-}                       # empty: the published count in the .yaml file
NONLINEAR_STEPS=${NONLINEAR_STEPS:-}
MICRO=${MICRO:-16}                                   # sequences per GPU per micro-step
ACCUM=$(( 1920 / (MICRO * NPROC) ))                  # gradient accumulation for a global batch of 1920
GC="torchrun --standalone --nproc_per_node=$NPROC -m gaincell"
[ "$NPROC" = 1 ] && GC=gaincell
COMMON="--grad-accum $ACCUM"   # every other setting: the recipes/*.yaml files
set -x
mkdir -p "$RUN"
[ -f "$RUN/owt-train.bin" ] || gaincell prepare --text "$DATA" --tokenizer "$MODEL" --out "$RUN/owt-train.bin"
[ -f "$RUN/owt-val.bin" ] || gaincell prepare --text "$DATA" --tokenizer "$MODEL" --out "$RUN/owt-val.bin" --max-docs 4007
$GC finetune --model "$MODEL" --hardware paper-linear --train "$RUN/owt-train.bin" --val "$RUN/owt-val.bin" \
    --config "$HERE"/gpt2-paper-linear.yaml --role linear ${LINEAR_STEPS:+--steps $LINEAR_STEPS} $COMMON --out "$RUN/linear"
gaincell adapt --model "$RUN/linear/model" --hardware paper --calib "$RUN/owt-train.bin" --calib-batch 16 \
    --calib-context 1024 --eval "$RUN/owt-val.bin" --out "$RUN/adapted" --json > "$RUN/adapt.json"
$GC finetune --model "$RUN/adapted" --hardware paper --train "$RUN/owt-train.bin" --val "$RUN/owt-val.bin" \
    --config "$HERE"/gpt2-paper-nonlinear.yaml --role nonlinear ${NONLINEAR_STEPS:+--steps $NONLINEAR_STEPS} $COMMON --out "$RUN/nonlinear"
gaincell bench --models "$MODEL,$RUN/linear/model,$RUN/adapted,$RUN/nonlinear/model" \
    --tasks wikitext,lambada_openai,hellaswag,arc_easy,arc_challenge,winogrande,piqa --batch-size 64 --out "$RUN/bench"
