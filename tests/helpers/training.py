"""Tiny training runs of a few seconds, in this process or as flags for a subprocess."""

import json

import torch

TINY_MODEL = {
    "hidden_size": 32, "num_attention_heads": 2, "maf_hidden_size": 16, "latent_dim": 3,
    "flow_layers": [{"coupling": "mixture_rosenblatt", "num_layers": 1},
                    {"coupling": "mixture_cdf", "num_mixtures": 2, "num_layers": 1},
                    {"coupling": "mixture_cdf", "num_mixtures": 2, "num_layers": 1}],
}


def tiny_args(output_dir, *extra: str, max_steps: int = 6, stages: tuple[int, ...] = (3,)) -> list[str]:
    """Flags of a run of a few seconds: the quickstart preset shrunk to width 32, blocks of 16 characters."""
    return ["--config", "quickstart", "--model_config", json.dumps(TINY_MODEL), "--output_dir", str(output_dir),
            "--block_size", "16", "--max_train_blocks", "512", "--max_eval_blocks", "8",
            "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8", "--max_steps", str(max_steps),
            "--stage_flow_layers", *map(str, stages), "--stage_fractions", *["1"] * len(stages),
            "--learning_rate", "3e-3", "--warmup_steps", "1", "--logging_steps", "1", "--eval_steps", "1000",
            "--save_steps", "0", "--num_samples", "1", "--sample_length", "8", "--report_to", "none", *extra]


def run_in_process(argv: list[str], entry: str = "main"):
    """`training.run.main` (or `cli`) on one CPU thread (tiny models gain nothing from more, and a shared machine's
    other load stalls multi-threaded ones), then Accelerate's process-wide state reset so the next run starts
    clean."""
    from accelerate.state import AcceleratorState, GradientState

    import training.run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return getattr(training.run, entry)(argv)
    finally:
        torch.set_num_threads(threads)
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
