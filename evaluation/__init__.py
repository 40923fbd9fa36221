"""Evaluation harness for TarFlowLM and causal-LM baselines (paper Tables 2 and 6).

Command lines (each writes one JSON file; see ``evaluation/README.md``):

- ``python -m evaluation.likelihood MODEL --data FILE``: corpus NELBO / importance-weighted bounds -> BPC or PPL,
  each ± its standard error.
- ``python -m evaluation.generative MODEL --num_samples N``: Gen-PPL, MAUVE and entropy of the model's samples.
- ``python -m evaluation.report``: Markdown tables and a training-curve plot from result JSONs and training logs.

Modules, one concept each: ``bounds`` (ELBO / IW arithmetic), ``corpus`` (blocks of evaluation text, cut by
``training.data``), ``loading`` and ``offline_assets`` (models from folders, aliases or the Hub), ``sampling``,
``gen_ppl``, ``entropy``, ``features`` and ``mauve_score`` (MAUVE), ``tokens`` (tokenising and padding),
``training_logs`` and ``report`` (tables and curves), ``records`` (JSON run records), ``cli`` (the shared settings
dataclass, ``--protocol quick|paper``, one-line usage errors);
``metrics/`` holds local ``evaluate`` scripts wrapping ``gen_ppl`` and ``entropy``.
Heavy optional libraries (mauve, evaluate, matplotlib, sentence encoders) are imported inside the functions that
need them.
"""
