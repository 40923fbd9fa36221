"""The mixture CDF F = Σ_k w_k Φ(s_k) in both tails, as the flows evaluate it, against its log-space reference.

Every forward pass of a Mix-1 layer (§3.2.1) and of a Mix-d layer's Rosenblatt transform (§3.2.2, Alg. 1) needs
(log F, log(1 − F)) over K components for every latent entry: u = Φ⁻¹(F). The reference sums log-space terms,
logsumexp_k(log w_k + log Φ(±s_k)) with `torch.special.log_ndtr` (two evaluations per term); the library sums both
tails in linear space from one erfc per term and takes the log-space sums only for entries whose F or 1 − F is
near underflow (`modeling_tarflow.mixtures.log_cdf_pair`). Timed, interleaved, on the same inputs:

- `log_cdf_pair` alone at the shapes of a Mix-1 layer (B·T·c entries, K = 64) and of the frozen Mix-d layer of
  progressive stages 2–3 (B·T·d entries, K = V), forward only and forward + backward;
- `MixtureRosenblattCoupling.forward` under `no_grad` (the frozen Mix-d layer) at V = 1024 … 50257, d = 16, and
  with backward at the smallest V: the library's (linear-space sums, log|det| from log p_mixd, chunks sized to the
  CPU's L2 cache), the same in one chunk, and the reference (log-space sums, the log-determinant summed from d
  mixture densities, one chunk), with the largest differences in u and log|det| between library and reference.

    python -m bench.mixture_cdf [--vocab_sizes 1024 8192 50257] [--tokens 256] [--rounds 3]
    python -m bench.mixture_cdf --before 9651dcc --model_folder outputs/bpe-mixd/model --tokens 128   # and real inputs
    python -m bench.mixture_cdf --vocab_sizes 50257 --codebook_log_sigma -2.5 --before 9651dcc   # a narrow codebook
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gzip
import json
import math
import statistics
import time
from pathlib import Path
from unittest import mock

import torch
from transformers import AutoTokenizer

from bench.code_at import model_code_at
from bench.environment import RESULTS_DIR, write_result
from bench.scaling import seconds_per_step
from modeling_tarflow import TarFlowForCausalFlowLM
from modeling_tarflow.codebook import GaussianCodebook
from modeling_tarflow.couplings import MixtureRosenblattCoupling
from modeling_tarflow.mixtures import log_cdf_pair, mixture_cdf_transform


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab_sizes", type=int, nargs="+", default=[1024, 8192, 50257],
                        help="K = V of the frozen Mix-d layer")
    parser.add_argument("--latent_dim", type=int, default=16, help="d")
    parser.add_argument("--tokens", type=int, default=256, help="tokens (B·T) per call")
    parser.add_argument("--mix1_entries", type=int, default=256 * 16, help="latent entries (B·T·c) of the Mix-1 call")
    parser.add_argument("--mix1_mixtures", type=int, default=64, help="K of the Mix-1 call")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (best and median kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--codebook_log_sigma", type=float, default=-1.0,
                        help="log σ of the synthetic codebook (means ~ N(0, 1)); the latents are drawn at that σ")
    parser.add_argument("--before", default=None,
                        help="also time the Mix-d coupling of the model code at this git commit, same weights")
    parser.add_argument("--model_folder", default=None,
                        help="also time the frozen transform on a trained model's Mix-d layer and real inputs")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parent.parent.parent / "shared" / "data"
                                              / "literary-docs"),
                        help="a folder with valid.jsonl.gz (documents) for --model_folder's inputs")
    parser.add_argument("--output", default="mixture_cdf", help="name of the JSON file")
    parser.add_argument("--output_dir", default=str(RESULTS_DIR), help="where the JSON file goes")
    return parser.parse_args(argv)


def log_space_pair(standardized: torch.Tensor, log_w: torch.Tensor, dim: int = -1):
    """The reference: logsumexp_k(log w_k + log Φ(±s_k)), two `log_ndtr` per term."""
    return (torch.logsumexp(log_w + torch.special.log_ndtr(standardized), dim=dim),
            torch.logsumexp(log_w + torch.special.log_ndtr(-standardized), dim=dim))


def reference_rosenblatt(coupling: MixtureRosenblattCoupling, z: torch.Tensor, logits: torch.Tensor):
    """Alg. 1 with the log-space pair and log|det| = Σ_i [log p(z_i | z_{<i}) − log N(u_i)] summed from d mixture
    densities of K terms each."""
    components = coupling.components
    log_pi = torch.log_softmax(logits, dim=-1)
    per_dim = components.log_prob_per_dim(z)
    log_alpha = torch.log_softmax(log_pi.unsqueeze(-1) + per_dim.cumsum(-1) - per_dim, dim=-2).transpose(-1, -2)
    mu, log_sigma = components.mu, components.log_sigma.expand(coupling.latent_dim, -1)
    with mock.patch("modeling_tarflow.mixtures.log_cdf_pair", log_space_pair):
        u, log_det = mixture_cdf_transform(z, log_alpha, mu.T, log_sigma)
    return u.flatten(-2), log_det.sum((-1, -2))


def best_and_median(functions: dict, rounds: int) -> dict:
    """Seconds of each function, interleaved over rounds after one warm-up each (`scaling.seconds_per_step`)."""
    seconds = seconds_per_step(functions, argparse.Namespace(rounds=rounds, device="cpu"))
    return {name: {"best_seconds": min(times), "median_seconds": statistics.median(times), "seconds": times}
            for name, times in seconds.items()}


def pair_inputs(entries: int, mixtures: int, spread: float, generator: torch.Generator):
    """Standardized values and log weights of `entries` mixtures: spread like a trained layer's (most components
    far from the point, a few near it)."""
    standardized = spread * torch.randn(entries, mixtures, generator=generator)
    log_w = torch.log_softmax(3 * torch.randn(entries, mixtures, generator=generator), -1)
    return standardized, log_w


def forward_and_backward(pair, standardized: torch.Tensor, log_w: torch.Tensor):
    def run():
        leaf = standardized.detach().requires_grad_(True)
        sum(x.sum() for x in pair(leaf, log_w)).backward()
    return run


def time_pairs(args, generator: torch.Generator) -> list[dict]:
    """`log_cdf_pair` against the reference at a Mix-1 layer's shape and at the frozen Mix-d layers'."""
    shapes = [("mix1", args.mix1_entries, args.mix1_mixtures, 3.0)]
    shapes += [(f"mixd_V{v}", args.tokens * args.latent_dim, v, 30.0) for v in args.vocab_sizes]
    rows = []
    for name, entries, mixtures, spread in shapes:
        standardized, log_w = pair_inputs(entries, mixtures, spread, generator)
        functions = {"linear_forward": lambda: log_cdf_pair(standardized, log_w),
                     "log_space_forward": lambda: log_space_pair(standardized, log_w)}
        if name == "mix1":
            functions.update(linear_forward_backward=forward_and_backward(log_cdf_pair, standardized, log_w),
                             log_space_forward_backward=forward_and_backward(log_space_pair, standardized, log_w))
        timed = best_and_median(functions, args.rounds)
        differences = [(a - b).abs().max().item() for a, b in zip(log_cdf_pair(standardized, log_w),
                                                                  log_space_pair(standardized, log_w))]
        rows.append({"shape": name, "entries": entries, "mixtures": mixtures, "timings": timed,
                     "speedup_forward": timed["log_space_forward"]["best_seconds"]
                     / timed["linear_forward"]["best_seconds"],
                     "max_abs_difference_log_cdf_log_sf": differences})
        print(f"{name:12s} K={mixtures:6d}: {rows[-1]['speedup_forward']:.2f}x, max |diff| {differences}", flush=True)
    return rows


def rosenblatt_inputs(vocab_size: int, args, generator: torch.Generator):
    """A Mix-d coupling tied to a codebook of `vocab_size` narrow components (a trained codebook's shape), with the
    latents z of `args.tokens` tokens drawn near their components, and the features its head reads."""
    codebook = GaussianCodebook(vocab_size, args.latent_dim)
    coupling = MixtureRosenblattCoupling(8, 1, args.latent_dim, vocab_size, codebook)
    with torch.no_grad():
        codebook.mu.normal_(generator=generator)
        codebook.log_sigma.fill_(args.codebook_log_sigma)
        coupling.head.weight.normal_(generator=generator)
        coupling.head.bias.zero_()
    ids = torch.randint(0, vocab_size, (1, args.tokens), generator=generator)
    sigma = math.exp(args.codebook_log_sigma)
    z = (codebook.mu[ids] + sigma * torch.randn(1, args.tokens, args.latent_dim, generator=generator)).detach()
    return coupling, z, torch.randn(1, args.tokens, 8, generator=generator)


def rosenblatt_variants(coupling: MixtureRosenblattCoupling, z: torch.Tensor, features: torch.Tensor,
                        before: str | None = None) -> dict:
    """The transform four ways: the library's (`forward`: pruned when frozen at large V, `mixd_pruning.py`), its
    dense transform (chunks sized to the CPU's L2 cache) and the same in one chunk, the reference (log-space sums,
    log|det| from d mixture densities, one chunk), and (`before`) the coupling of the model code at that commit."""
    dense = mock.patch("modeling_tarflow.couplings.uses_pruned_transform", lambda _: False)
    unchunked = mock.patch("modeling_tarflow.fast_paths.CPU_CHUNK_ELEMENTS", 1 << 62)

    def patched(*patches):
        def run():
            with contextlib.ExitStack() as stack:
                for patch in patches:
                    stack.enter_context(patch)
                return coupling(z, features)
        return run
    variants = {"library": lambda: coupling(z, features), "dense": patched(dense),
                "dense_one_chunk": patched(dense, unchunked),
                "reference": lambda: reference_rosenblatt(coupling, z.unflatten(-1, (coupling.patch_size, -1)),
                                                          coupling.mixture_logits(features))}
    if before:
        old = coupling_at(before, coupling)
        variants["before"] = lambda: old(z, features)
    return variants


def coupling_at(commit: str, coupling: MixtureRosenblattCoupling):
    """The same Mix-d coupling (weights, components) built by the model code at `commit`."""
    code = model_code_at(commit)
    components = code.codebook.GaussianCodebook(coupling.num_mixtures, coupling.latent_dim)
    components.load_state_dict(coupling.components.state_dict())
    old = code.couplings.MixtureRosenblattCoupling(coupling.head.weight.shape[1], coupling.patch_size,
                                                   coupling.latent_dim, coupling.num_mixtures, components)
    old.head.load_state_dict(coupling.head.state_dict())
    return old.requires_grad_(False)


@torch.no_grad()
def float64_rosenblatt(coupling: MixtureRosenblattCoupling, z: torch.Tensor, features: torch.Tensor,
                       tokens_per_chunk: int = 4):
    """The dense transform in float64 at the same float32 inputs, a few tokens at a time."""
    wide = copy.deepcopy(coupling).double()
    pieces = [wide._rosenblatt(z[:, s:s + tokens_per_chunk].double().unflatten(-1, (coupling.patch_size, -1)),
                               wide.mixture_logits(features[:, s:s + tokens_per_chunk].double()))
              for s in range(0, z.shape[1], tokens_per_chunk)]
    return torch.cat([u for u, _ in pieces], 1), torch.cat([log_det for _, log_det in pieces], 1)


def validation_ids(folder: str, data: str, block: int, documents: int = 200) -> torch.Tensor:
    """Blocks (n, block) of the first `documents` validation documents of `data`, by the tokenizer in `folder`."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with gzip.open(Path(data) / "valid.jsonl.gz", "rt") as lines:
        text = " ".join(json.loads(line)["text"] for line, _ in zip(lines, range(documents)))
    ids = tokenizer(text)["input_ids"]
    return torch.tensor(ids[:len(ids) // block * block]).view(-1, block)


def trained_inputs(folder: str, tokens: int, data: str):
    """A trained model's Mix-d first layer, with latents z ~ q(z|x) of real validation text and the features its
    conditioner reads from them (the inputs of the frozen layer in progressive stages 2–3)."""
    model = TarFlowForCausalFlowLM.from_pretrained(folder).eval().requires_grad_(False)
    block = model.config.max_position_embeddings
    ids = validation_ids(folder, data, block)[:max(1, tokens // block)]
    torch.manual_seed(0)
    layer = model.flow.layers[0]
    with torch.no_grad():
        x = layer.order(layer.mix(model.flow.patchify(model.encode(ids))))
        features = layer.conditioner(x)
    return layer.coupling, x, features


def with_backward(function, z: torch.Tensor):
    """`function` as a training step through the transform: forward and backward to z (stage 1 through u)."""
    def run():
        z.grad = None
        u, log_det = function()
        (u.square().sum() + log_det.sum()).backward()
    return run


def time_frozen_rosenblatt(args, generator: torch.Generator) -> list[dict]:
    """The Mix-d layer's Rosenblatt transform, frozen (no_grad: progressive stages 2–3) at every V and for a
    trained model's real inputs (`--model_folder`), and trained (forward + backward, at the smallest V)."""
    inputs = [(v, "synthetic", *rosenblatt_inputs(v, args, generator)) for v in args.vocab_sizes]
    if args.model_folder:
        coupling, z, features = trained_inputs(args.model_folder, args.tokens, args.data)
        inputs.append((coupling.num_mixtures, "trained", coupling, z, features))
    rows = [frozen_row(vocab_size, kind, coupling.requires_grad_(False), z, features, args)
            for vocab_size, kind, coupling, z, features in inputs]
    coupling, z, features = rosenblatt_inputs(args.vocab_sizes[0], args, generator)
    z.requires_grad_(True)
    timed = best_and_median({name: with_backward(function, z) for name, function in
                             rosenblatt_variants(coupling, z, features).items()}, args.rounds)
    rows.append({"mode": "trained", "inputs": "synthetic", **rosenblatt_row(args.vocab_sizes[0], timed, args)})
    return rows


def frozen_row(vocab_size: int, kind: str, coupling, z, features, args) -> dict:
    """Timings of every variant without gradients, and each one's largest error against float64."""
    variants = rosenblatt_variants(coupling, z, features, args.before)
    with torch.no_grad():
        timed = best_and_median(variants, args.rounds)
        outputs = {name: function() for name, function in variants.items()}
    u64, log_det64 = float64_rosenblatt(coupling, z, features)
    errors = {name: {"max_abs_error_u": (u.double() - u64).abs().max().item(),
                     "max_relative_error_log_det": ((log_det.double() - log_det64).abs()
                                                    / log_det64.abs().clamp_min(1)).max().item()}
              for name, (u, log_det) in outputs.items()}
    return {"mode": "frozen", "inputs": kind, **rosenblatt_row(vocab_size, timed, args),
            "errors_against_float64": errors, "max_abs_log_det": log_det64.abs().max().item()}


def rosenblatt_row(vocab_size: int, timed: dict, args) -> dict:
    speed = {name: args.tokens / t["best_seconds"] for name, t in timed.items()}
    print(f"Rosenblatt V={vocab_size:6d}: " + ", ".join(f"{name} {value:.0f}" for name, value in speed.items())
          + " tokens/s", flush=True)
    row = {"vocab_size": vocab_size, "latent_dim": args.latent_dim, "tokens": args.tokens, "timings": timed,
           "tokens_per_second": speed, "speedup_over_reference": speed["library"] / speed["reference"],
           "speedup_over_dense": speed["library"] / speed["dense"],
           "speedup_of_chunks": speed["dense"] / speed["dense_one_chunk"]}
    if "before" in speed:
        row["speedup_over_before"] = speed["library"] / speed["before"]
    return row


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    result = {"config": vars(args), "note": "best of interleaved rounds; the median beside it shows the spread",
              "log_cdf_pair": time_pairs(args, generator), "frozen_rosenblatt": time_frozen_rosenblatt(args, generator)}
    result["wall_seconds"] = time.perf_counter() - started
    print(f"-> {write_result(args.output, result, args.output_dir)}")
    return result


if __name__ == "__main__":
    main()
