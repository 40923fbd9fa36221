"""Where the fused and chunked fast paths of the V-sized Mix-d arithmetic run, and how large their chunks are: the one
place that knows about devices, caches and the compiler. The equations themselves (`tied_mixd_likelihood.py`,
`mixd_pruning.py`, `couplings.py`) take a chunk size and never ask which device they are on.

- On a CPU a chunk's working set should stay in the core's cache: the V-sized passes are memory-bound once they
  spill (bench/results/mixture_cdf.json, `speedup_of_chunks`).
- On a GPU a chunk is as large as a memory budget allows: large chunks keep the matmuls efficient.
- Under `torch.compile` the plain formulas are traced instead (Inductor fuses their elementwise passes; a custom
  autograd function with data-dependent branches would break the graph).
- The codebook matmuls run in IEEE float32 whatever `torch.set_float32_matmul_precision` says: TF32 (GPU) or
  bf16 (oneDNN on a CPU with AMX) would change log N_k(z) by 1e-3 to 1e-1 nats.
"""

from __future__ import annotations

import contextlib

import torch

# float32 elements of one chunk's per-component terms on a CPU (1 MiB: half a core's L2 here).
CPU_CHUNK_ELEMENTS = 1 << 18
# Rows of a token-chunked V-way pass on a CPU: large enough that the (V, D) head weight, read once per chunk by
# each matmul, is amortised, small enough that the (rows, V) temporaries stay in the last-level cache. At
# V = 50257 (bench/results/scaling_vocabulary.json, `tarflow_stage1_rows*`): 32 rows 0.74× GPT-2's tokens/s and
# 359 KiB/token, 64 rows 0.72× and 567 KiB/token, 128 rows 0.64× and 738 KiB/token.
CPU_TOKEN_ROWS = 32
# float32 elements of one chunk's (rows, V) temporaries on a GPU (256 MiB each).
GPU_CHUNK_ELEMENTS = 1 << 26


# Components from which a 1-D mixture's root finder sums its CDF in linear space (`mixtures.log_cdf_pair`, one erfc
# per term) rather than from log Φ terms: below it the per-operation overhead of the longer formula dominates.
LINEAR_CDF_MIN_COMPONENTS = 256


def uses_linear_cdf_sums(num_components: int) -> bool:
    """Whether a root finder over this many mixture components sums its CDF in linear space."""
    return num_components >= LINEAR_CDF_MIN_COMPONENTS


# Components from which the stage-1 likelihood takes its fused, chunked pass: below it the (tokens, K) terms are
# small and the plain formula's few operations are faster.
FUSED_LIKELIHOOD_MIN_COMPONENTS = 1024


def use_fused_path(num_components: int | None = None) -> bool:
    """Whether the hand-fused, chunked paths run (eager mode, and at least `FUSED_LIKELIHOOD_MIN_COMPONENTS`
    components when given), or the plain formulas (under `torch.compile`, or for few components)."""
    if num_components is not None and num_components < FUSED_LIKELIHOOD_MIN_COMPONENTS:
        return False
    return not torch.compiler.is_compiling()


# Components from which a frozen Mix-d layer's transform prunes its components (`mixd_pruning.py`); below it the
# dense transform is as fast.
PRUNED_TRANSFORM_MIN_COMPONENTS = 1024
# float32 elements of the pruned transform's (d − 1, tokens, K) estimates per chunk (32 MiB): enough tokens per
# chunk for an efficient matmul and few Python steps.
PRUNED_CHUNK_ELEMENTS = 1 << 23


def uses_pruned_transform(num_components: int) -> bool:
    """Whether a frozen Mix-d layer with this many components prunes them (`MixtureRosenblattCoupling.forward`)."""
    return num_components >= PRUNED_TRANSFORM_MIN_COMPONENTS


def rows_per_chunk(device: torch.device, elements_per_row: int, memory_budget: int | None = None,
                   pruned: bool = False) -> int:
    """Rows of a token-chunked pass whose rows each hold `elements_per_row` V-sized terms, at most `memory_budget`
    elements at once (a configured budget) and, on a CPU, sized to the cache (`pruned`: the pruned transform's
    budget instead)."""
    if pruned:
        rows = max(1, PRUNED_CHUNK_ELEMENTS // elements_per_row)
    elif device.type == "cpu":
        rows = max(1, CPU_CHUNK_ELEMENTS // elements_per_row)
    else:
        rows = max(1, GPU_CHUNK_ELEMENTS // elements_per_row)
    if memory_budget is not None:
        rows = min(rows, max(1, memory_budget // elements_per_row))
    return rows


def token_rows(device: torch.device, vocab_size: int) -> int:
    """Rows (tokens) per chunk of the fused stage-1 likelihood (`tied_mixd_likelihood.py`)."""
    if device.type == "cpu":
        return CPU_TOKEN_ROWS
    return max(1, GPU_CHUNK_ELEMENTS // vocab_size)


@contextlib.contextmanager
def ieee_float32_matmul():
    """float32 matmuls in IEEE precision inside the block (no TF32, no bf16 passes), restored after it."""
    saved = torch.get_float32_matmul_precision()
    if saved == "highest":
        yield
        return
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)


__all__ = ["CPU_CHUNK_ELEMENTS", "CPU_TOKEN_ROWS", "GPU_CHUNK_ELEMENTS", "FUSED_LIKELIHOOD_MIN_COMPONENTS",
           "LINEAR_CDF_MIN_COMPONENTS", "PRUNED_CHUNK_ELEMENTS", "PRUNED_TRANSFORM_MIN_COMPONENTS", "use_fused_path",
           "uses_linear_cdf_sums", "uses_pruned_transform", "rows_per_chunk", "token_rows", "ieee_float32_matmul"]
