#!/usr/bin/env bash
# The trained Mix-d model at GPT-2's vocabulary that bench/sampling.py, bench/mixture_cdf.py and bench/scaling.py
# time with --model_folder: literary-docs with the GPT-2 tokenizer (V = 50257, d = 16), width 128, a Mix-d layer of
# 4 transformer layers tied to the codebook and two Mix-1 layers of 1, progressive stage 1 for 99% of 700 steps
# (about 12 minutes on 2 CPU cores), so that the Mix-d inverse's pruning meets a real next-token distribution.
#
#   bash bench/train_bpe_mixd.sh [OUTPUT_DIR]        # default outputs/bpe-mixd; the model in OUTPUT_DIR/model
set -euo pipefail
cd "$(dirname "$0")/.."
HF_HUB_OFFLINE=1 accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
  training/run.py --dataset ../shared/data/literary-docs --tokenizer ../shared/data/gpt2-tokenizer --block_size 64 \
  --per_device_train_batch_size 8 --learning_rate 3e-3 --lr_scheduler_type cosine --warmup_steps 50 --adam_beta2 0.99 \
  --ema_decay 0.99 --max_grad_norm 1.0 --weight_decay 0.0 --max_eval_blocks 64 --logging_steps 20 --save_steps 0 \
  --num_samples 0 --sample_length 64 --max_steps 700 --seed 0 \
  --model_config '{"latent_dim": 16, "patch_size": 1, "hidden_size": 128, "num_attention_heads": 4, "maf_hidden_size": 64, "channel_mixing": false, "flow_layers": [{"coupling": "mixture_rosenblatt", "num_layers": 4}, {"coupling": "mixture_cdf", "num_layers": 1, "num_mixtures": 64, "autoregressive_dims": true}, {"coupling": "mixture_cdf", "num_layers": 1, "num_mixtures": 64, "autoregressive_dims": true}]}' \
  --stage_flow_layers 1 2 3 --stage_fractions 0.99 0.005 0.005 --output_dir "${1:-outputs/bpe-mixd}"
