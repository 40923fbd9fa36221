"""Evaluation harness for TarFlowLM and causal-LM baselines (paper Tables 2 and 6).

Command lines (each writes one JSON file; see ``evaluation/README.md``):

- ``python -m evaluation.likelihood MODEL --data FILE``: corpus NELBO / importance-weighted bounds -> BPC or PPL,
  each ± its standard error.
- ``python -m evaluation.generative MODEL --num_samples N``: Gen-PPL, MAUVE and entropy of the model's samples.
- ``python -m evaluation.report``: Markdown tables and a training-curve plot from result JSONs and training logs.

Modules, one concept each: ``bounds`` (ELBO / IW arithmetic, and the units: nats → bits, perplexity),
``causal_lm`` (a causal LM's start token, block NLL and samples, shared with training's GPT-2 baseline), ``corpus``
(blocks of evaluation text, cut by ``training.data``), ``loading`` and ``offline_assets`` (models from folders,
aliases or the Hub), ``sampling``, ``gen_ppl``, ``entropy`` (unigram entropy, also training's floor), ``features`` and
``mauve_score`` (MAUVE), ``tokens`` (tokenising and padding), ``training_logs`` (the one ``metrics.jsonl`` reader) and
``report`` (tables and curves), ``metrics`` (Gen-PPL, entropy and MAUVE as ``evaluate`` modules, which
``gen_ppl``, ``entropy``, ``mauve_score`` and ``tokens`` re-export), ``sweep`` (Gen-PPL against entropy over a
sampling setting), ``records`` (JSON run records and the machine record the benchmarks share), ``cli``
(the shared settings dataclass, ``--protocol quick|paper``, one-line usage errors).
Training imports the shared pieces (``bounds``, ``causal_lm``, ``entropy``, ``training_logs``), which need only torch
and transformers.
Heavy optional libraries (mauve, evaluate, matplotlib, sentence encoders) are imported inside the functions that
need them.
"""
