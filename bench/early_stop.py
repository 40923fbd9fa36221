"""Time saved by stopping early: once every row of a batch has ended (its first EOS), `generate` inverts no further
patch of the first flow layer, the last one inverted (`modeling_tarflow/deciding_inversion.py`).

Only that layer's remaining patches can be saved: the layers above it are inverted whole before it starts, and a
right-to-left one (the quickstart model's second layer) cannot be cut short at all, since its first patch in
sequence order is its last in its own order. The character model has no EOS symbol, so a character plays its part:
`--eos` is a list of characters, one run each, from early (space: every row ends at its first word) to later ones.
Each is timed against two references at the same seed: the same call with EOS banned at every position
(`min_new_tokens` = the length: the same patch-by-patch decisions, never stopping) and the call without EOS (the
plain sampler). Rounds interleave the configurations; the best round is kept beside the median.

    python -m bench.early_stop [--model_folder outputs/quickstart-tarflow/model] [--batch_size 32] [--length 128]
    python -m bench.early_stop --tiny --rounds 1 --output_dir /tmp/x        # a random tiny model, seconds
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench.environment import RESULTS_DIR, write_result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_folder", default="outputs/quickstart-tarflow/model")
    parser.add_argument("--tiny", action="store_true", help="a random tiny character model instead (for tests)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--eos", nargs="+", default=[" ", "t", "w"], help="characters that play EOS, one run each")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default=str(RESULTS_DIR))
    return parser.parse_args(argv)


def load(args):
    """(model, tokenizer): the trained folder, or a seeded random tiny character model."""
    from training.tokenization_char import build_char_tokenizer

    from modeling_tarflow import TarFlowConfig, TarFlowForCausalFlowLM

    if not args.tiny:  # this checkout's sampler, not the copy of the code saved with the weights
        from transformers import AutoTokenizer
        return (TarFlowForCausalFlowLM.from_pretrained(args.model_folder).eval(),
                AutoTokenizer.from_pretrained(args.model_folder, trust_remote_code=True))
    config = TarFlowConfig(vocab_size=27, latent_dim=3, hidden_size=32, num_attention_heads=2, maf_hidden_size=16,
                           max_position_embeddings=args.length,
                           flow_layers=[{"coupling": "mixture_rosenblatt", "num_layers": 1},
                                        {"coupling": "mixture_cdf", "num_mixtures": 2, "num_layers": 1}])
    torch.manual_seed(args.seed)
    return TarFlowForCausalFlowLM(config).eval(), build_char_tokenizer()


def configurations(args, tokenizer) -> dict[str, dict]:
    """name → generate keywords: the plain sampler, then per EOS character the stopping run and its reference."""
    common = dict(max_new_tokens=args.length, num_return_sequences=args.batch_size, seed=args.seed,
                  decoding="sequential", return_dict_in_generate=True)
    runs = {"no_eos": common}
    for char in args.eos:
        eos = tokenizer.convert_tokens_to_ids(char)
        runs[f"eos={char!r}"] = {**common, "eos_token_id": eos}
        runs[f"eos={char!r} banned"] = {**common, "eos_token_id": eos, "min_new_tokens": args.length}
    return runs


def time_runs(model, runs: dict[str, dict], rounds: int) -> dict[str, dict]:
    seconds = {name: [] for name in runs}
    outputs = {}
    for _ in range(rounds):
        for name, kwargs in runs.items():
            start = time.perf_counter()
            outputs[name] = model.generate(**kwargs)
            seconds[name].append(time.perf_counter() - start)
    return {name: {"best_seconds": min(times), "median_seconds": statistics.median(times),
                   "decided_patches": outputs[name].decided_patches, "rows_ended": rows_ended(outputs[name], runs[name])}
            for name, times in seconds.items()}


def rows_ended(output, kwargs: dict) -> int | None:
    if "eos_token_id" not in kwargs:
        return None
    return int((output.sequences == kwargs["eos_token_id"]).any(dim=1).sum())


def savings(results: dict[str, dict], args, patches: int) -> dict[str, dict]:
    """Per EOS character: the share of first-layer patches not inverted, and the seconds saved (best rounds)."""
    out = {}
    for char in args.eos:
        stopped, banned = results[f"eos={char!r}"], results[f"eos={char!r} banned"]
        out[repr(char)] = {
            "first_layer_patches_skipped": 1 - stopped["decided_patches"] / patches,
            "seconds_saved_vs_eos_banned": banned["best_seconds"] - stopped["best_seconds"],
            "fraction_saved_vs_eos_banned": 1 - stopped["best_seconds"] / banned["best_seconds"],
            "fraction_saved_vs_no_eos": 1 - stopped["best_seconds"] / results["no_eos"]["best_seconds"]}
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = load(args)
    results = time_runs(model, configurations(args, tokenizer), args.rounds)
    payload = {"settings": {**vars(args), "flow_layers": model.config.flow_layers}, "results": results,
               "savings": savings(results, args, args.length // model.config.patch_size)}
    path = write_result("early_stop", payload, args.output_dir)
    for name, row in payload["savings"].items():
        print(f"EOS {name}: {row['first_layer_patches_skipped']:.0%} of first-layer patches skipped, "
              f"{row['fraction_saved_vs_eos_banned']:.0%} of the time saved -> {path}")
    return payload


if __name__ == "__main__":
    main()
