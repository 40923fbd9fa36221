"""Training TarFlowLM and its GPT-2 baseline: ``accelerate launch training/run.py --config quickstart``.

Modules, in the order a run uses them: ``arguments`` (the settings dataclass = the flags, presets), ``data`` (blocks
of token ids from text8, OpenWebText, the shipped corpus or files), ``tokenization_char`` (the 27-symbol character
tokenizer), ``recipes`` (TarFlowLM and the GPT-2 baseline behind one build / score / sample interface), ``stages``
(progressive layer-wise training, §3.3), ``trainer`` (the optimizer step: schedule, non-finite guard, EMA, held-out
evaluation, logging), ``checkpointing`` (resumable checkpoints and the run record they carry), ``run`` (the entry
point, export, model card, Hub upload) and ``errors`` (the one-line usage errors).
"""
