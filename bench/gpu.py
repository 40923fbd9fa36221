"""One GPU run, started by `bench/gpu.sh`: on one H100/H200, in under 8 minutes, it writes
<output_dir>/gpu.json with

- checks, before any timing: every timed model's training loss is finite, TarFlowLM's flow inverts its forward
  (z → u → z), and sampled ids lie in the vocabulary;
- training: tokens/s and peak memory per token of a training step (forward, backward, AdamW) under bf16 autocast —
  TarFlowLM in the text8-Mix-d (V 27, d 5, 256 tokens) and OWT-Mix-d (V 50257, d 16, 1024 tokens; progressive
  stage 1 and stage 3) shapes of the text8-mixd / owt-mixd presets (§4's Mix-d) at GPT-2-small width (3 flow
  layers × 4 transformer layers, 768 wide, 12 heads) against `GPT2LMHeadModel` with the same 12 layers, vocabulary and length — eager, then under `torch.compile`;
- the Mix-d layer at GPT-2's vocabulary (OWT-Mix-d shape): the frozen transform alone, pruned against dense, and
  exact sampling at batch 1 and 16 against GPT-2's `generate`;
- sampling: tokens/s of TarFlowLM (text8-Mix-d shape, briefly trained on the shipped corpus so no flow is the
  identity) at batch 1/32/256 and patch 1/2/4, sequential and Jacobi, against GPT-2's `generate` (KV cache), with
  `bench/sampling.py`'s own functions; then, as time allows, with the compiled coupling inverse and GPT-2's
  compiled static-cache `generate`.

Sections run in priority order against a deadline (`--budget_seconds`): one that does not fit is recorded as
skipped, one that fails is recorded with its error, and the JSON is rewritten after every section, so a run that is
cut short still leaves what it measured. Optional libraries are imported where they are used.

    bash bench/gpu.sh                     # the GPU run: $OUT/gpu.json (else bench/results/gpu.json)
    bash bench/gpu.sh --dry /tmp/gpu      # tiny sizes on the CPU in seconds (tests/test_bench.py)
"""

from __future__ import annotations

import argparse
import time
import traceback

import torch

from bench import sampling
from bench.environment import RESULTS_DIR, write_result
from bench.forward import FLOW_LAYERS, gpt2_like
from bench.scaling import peak_step_bytes
from modeling_tarflow import TarFlowConfig, TarFlowForCausalFlowLM

OWT_LAYERS = [{"coupling": "mixture_rosenblatt", "num_layers": 4},
              {"coupling": "mixture_cdf", "num_mixtures": 64, "num_layers": 4},
              {"coupling": "mixture_cdf", "num_mixtures": 64, "num_layers": 4}]
FULL = {  # shapes of the GPU run: (V, d, tokens, batch, flow layers) per model, GPT-2-small width
    "shapes": {"text8_mixd": (27, 5, 256, 32, FLOW_LAYERS), "owt_mixd": (50257, 16, 1024, 8, OWT_LAYERS)},
    "width": 768, "heads": 12, "rounds": 3, "stage3_batch": 2,
    "sampling": ["--width", "768", "--heads", "12", "--batch_sizes", "1", "32", "256", "--length", "64",
                 "--rounds", "2", "--variants", "maf", "--train_steps", "100", "--skip_drift"],
    "compile_backend": "inductor", "compiled_patch_size": "2", "compiled_shapes": ["text8_mixd", "owt_mixd"],
}
DRY_OWT_LAYERS = [{**layer, "num_layers": 1, **({"num_mixtures": 4} if "num_mixtures" in layer else {})}
                  for layer in OWT_LAYERS]
DRY = {
    "shapes": {"text8_mixd": (27, 5, 16, 2, [{**layer, "num_layers": 1} for layer in FLOW_LAYERS]),
               "owt_mixd": (300, 4, 16, 2, DRY_OWT_LAYERS)},
    "width": 32, "heads": 2, "rounds": 1, "stage3_batch": 2,
    "sampling": ["--width", "32", "--heads", "2", "--batch_sizes", "1", "2", "--patch_sizes", "1", "2",
                 "--length", "8", "--rounds", "1", "--variants", "maf", "--train_steps", "2", "--train_length", "16",
                 "--skip_drift"],
    "compile_backend": "eager",            # TorchDynamo's capture without code generation: seconds
    "compiled_patch_size": "1", "compiled_shapes": ["text8_mixd"],
}
TARFLOW_MODES = {"text8_mixd": {"all_layers": {}},
                 "owt_mixd": {"stage1": {"num_flow_layers": 1, "output_u": False},
                              "stage3": {"num_flow_layers": 3, "num_frozen_flow_layers": 1, "output_u": False}}}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry", action="store_true", help="tiny sizes on any device, seconds (a test runs this)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    parser.add_argument("--budget_seconds", type=float, default=450, help="sections starting after this are skipped")
    parser.add_argument("--output_dir", default=str(RESULTS_DIR), help="where gpu.json goes")
    parser.add_argument("--output", default="gpu", help="name of the JSON file")
    args = parser.parse_args(argv)
    args.plan = DRY if args.dry else FULL
    return args


class Run:
    """The result being built, its deadline, and the sections run against it."""

    def __init__(self, args):
        self.args, self.started = args, time.perf_counter()
        self.result = {"config": {key: value for key, value in vars(args).items() if key != "plan"},
                       "plan": repr(args.plan), "sections": {}}

    def section(self, name: str, function, estimate_seconds: float) -> None:
        """Run `function()` into result[name] unless the deadline leaves less than `estimate_seconds`."""
        elapsed = time.perf_counter() - self.started
        if elapsed + (0 if self.args.dry else estimate_seconds) > self.args.budget_seconds:
            self.result["sections"][name] = f"skipped: {elapsed:.0f} s of {self.args.budget_seconds:.0f} s used"
        else:
            try:
                self.result[name] = function()
                self.result["sections"][name] = f"done in {time.perf_counter() - self.started - elapsed:.0f} s"
            except Exception as error:  # a failed section must not lose the others' results
                self.result["sections"][name] = f"failed: {error!r}"
                self.result.setdefault("errors", {})[name] = traceback.format_exc()
        print(f"[{time.perf_counter() - self.started:5.0f} s] {name}: {self.result['sections'][name]}", flush=True)
        self.result["wall_seconds"] = time.perf_counter() - self.started
        write_result(self.args.output, self.result, self.args.output_dir)


def models_of(shape: str, args) -> tuple[TarFlowForCausalFlowLM, torch.nn.Module, int, int]:
    """TarFlowLM and the GPT-2 of its transformer for one shape, and its (tokens, batch)."""
    vocab_size, latent_dim, length, batch, layers = args.plan["shapes"][shape]
    torch.manual_seed(0)
    config = TarFlowConfig(vocab_size=vocab_size, latent_dim=latent_dim, hidden_size=args.plan["width"],
                           num_attention_heads=args.plan["heads"], max_position_embeddings=length, flow_layers=layers)
    return TarFlowForCausalFlowLM(config).to(args.device), gpt2_like(config).to(args.device), length, batch


def training_step(model, loss_of, ids: torch.Tensor, device: str, compiled: bool, backend: str):
    """A function running one bf16-autocast training step (forward, backward, AdamW) and returning the loss."""
    # static: TarFlowLM's layer counts are Python ints that select code paths, not sizes to generalise over
    forward = torch.compile(model, backend=backend, dynamic=False) if compiled else model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
            loss = loss_of(forward, ids)
        loss.backward()
        optimizer.step()
        return loss.detach()
    return step


def training_steps(shape: str, args, compiled: bool) -> dict:
    """name → (step, tokens per step) for TarFlowLM's modes and GPT-2 at one shape."""
    tarflow, gpt2, length, batch = models_of(shape, args)
    steps = {}
    for mode, kwargs in TARFLOW_MODES[shape].items():
        rows = args.plan["stage3_batch"] if mode == "stage3" else batch
        ids = torch.randint(0, tarflow.config.vocab_size, (rows, length), device=args.device)
        loss_of = lambda forward, ids, kwargs=kwargs: forward(ids, **kwargs).loss
        steps[f"tarflow_{mode}"] = (training_step(tarflow, loss_of, ids, args.device, compiled,
                                                  args.plan["compile_backend"]), rows * length)
    ids = torch.randint(0, gpt2.config.vocab_size, (batch, length), device=args.device)
    steps["gpt2"] = (training_step(gpt2, lambda forward, ids: forward(ids, labels=ids).loss, ids, args.device,
                                   compiled, args.plan["compile_backend"]), batch * length)
    return steps


def check_losses_finite(steps: dict) -> dict:
    """One step of each (also the warm-up, and the compilation when compiled); refuses a non-finite loss."""
    losses = {name: float(step()) for name, (step, _) in steps.items()}
    bad = {name: loss for name, loss in losses.items() if not torch.isfinite(torch.tensor(loss))}
    if bad:
        raise FloatingPointError(f"non-finite training losses: {bad}")
    return losses


def time_training(shape: str, args, compiled: bool) -> dict:
    steps = training_steps(shape, args, compiled)
    losses = check_losses_finite(steps)
    rows = {}
    for name, (step, tokens) in steps.items():
        seconds = []
        for _ in range(args.plan["rounds"]):
            sampling.synchronize()
            start = time.perf_counter()
            step()
            sampling.synchronize()
            seconds.append(time.perf_counter() - start)
        rows[name] = {"tokens_per_second": tokens / min(seconds), "seconds": seconds, "loss": losses[name],
                      "peak_memory_bytes_per_token": peak_step_bytes(step, args.device) / tokens}
    for row in rows.values():
        row["ratio_to_gpt2"] = row["tokens_per_second"] / rows["gpt2"]["tokens_per_second"]
    return rows


def round_trip_check(args) -> dict:
    """z → u → z through the text8-Mix-d stack (moved off its identity initialisation), float32."""
    tarflow, _, length, _ = models_of("text8_mixd", args)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in tarflow.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator).to(parameter.device))
    z = tarflow.encode(torch.randint(0, 27, (2, min(length, 64)), device=args.device))
    u = tarflow.flow(z).u
    error = float((tarflow.flow.inverse(u).z - z).abs().max())
    if not error < 1e-3:
        raise AssertionError(f"inverse(forward(z)) differs from z by {error}")
    return {"max_abs_error": error}


def time_sampling(args, built: dict, extra: list[str]) -> dict:
    """bench/sampling.py's cells (its own functions) with the plan's settings, on this device; the models are built
    and briefly trained once, into `built`, and shared by the sections."""
    settings = sampling.parse_args([*args.plan["sampling"], "--device", args.device, *extra])
    if not built:
        full = sampling.parse_args([*args.plan["sampling"], "--device", args.device])
        built.update(zip(("models", "losses", "gpt2"), sampling.build(full)))
    models = {key: model for key, model in built["models"].items() if key[1] in settings.patch_sizes}
    check = next(iter(models.values())).generate(max_new_tokens=settings.length, seed=0)
    if not (0 <= int(check.min()) and int(check.max()) < built["gpt2"].config.vocab_size):
        raise AssertionError("sampled ids outside the vocabulary")
    rows = sampling.summarise(settings, sampling.measure(settings, models, built["gpt2"]), models)
    return {"settings": vars(settings), "training_nelbo_per_token": {str(k): v for k, v in built["losses"].items()},
            "results": rows, "auto_rule": sampling.auto_rule_check(rows)}


def compiled_gpt2_generate(args) -> dict:
    """GPT-2's generate with a static cache, which transformers compiles, at batch 1 (tokens/s, best of 2)."""
    settings = sampling.parse_args([*args.plan["sampling"], "--device", args.device])
    gpt2 = sampling.build_models(settings.width, settings.heads, 256, args.device)[1].eval()
    start = torch.zeros(1, 1, dtype=torch.long, device=args.device)
    run = lambda: gpt2.generate(start, attention_mask=torch.ones_like(start), do_sample=True, pad_token_id=0,
                                max_new_tokens=settings.length, min_new_tokens=settings.length,
                                cache_implementation="static")
    run()
    seconds = [sampling.timed(lambda seed: run(), 0)[0] for _ in range(2)]
    return {"batch_size": 1, "length": settings.length, "tokens_per_second": settings.length / min(seconds),
            "seconds": seconds}


def mixd_vocabulary(args) -> dict:
    """At the OWT-Mix-d shape (V = 50257, d = 16): the frozen Mix-d transform alone (no_grad, progressive stages
    2–3), pruned (the library) against dense, tokens/s and largest |Δu|; and exact sequential sampling at batch 1
    and 16 against GPT-2's `generate` of the same transformer (the model untrained: its π is near uniform, so
    dimension 1 keeps every component)."""
    tarflow, gpt2, length, _ = models_of("owt_mixd", args)
    tarflow.eval().requires_grad_(False)
    gpt2.eval()
    layer, tokens = tarflow.flow.layers[0], min(length, 64 if not args.dry else 8)
    ids = torch.randint(0, tarflow.config.vocab_size, (4, tokens), device=args.device)
    with torch.no_grad():
        x = tarflow.flow.patchify(tarflow.encode(ids))
        features = layer.conditioner(x)
        dense = lambda: mock_dense(layer.coupling, x, features)
        transform = {"library": lambda: layer.coupling(x, features), "dense": dense}
        seconds = {name: [sampling.timed(lambda seed: run(), 0)[0] for _ in range(2)] for name, run in transform.items()}
        drift = float((transform["library"]()[0] - dense()[0]).abs().max())
    rows = {"frozen_transform_tokens_per_second": {name: ids.numel() / min(t) for name, t in seconds.items()},
            "frozen_transform_max_abs_difference_u": drift}
    new_tokens = 8 if args.dry else 32
    for batch in (1, 2 if args.dry else 16):
        start = torch.zeros(batch, 1, dtype=torch.long, device=args.device)
        runs = {"tarflow": lambda seed: tarflow.generate(max_new_tokens=new_tokens, num_return_sequences=batch,
                                                         seed=seed, decoding="sequential"),
                "gpt2": lambda seed: gpt2.generate(start, attention_mask=torch.ones_like(start), do_sample=True,
                                                   pad_token_id=0, max_new_tokens=new_tokens,
                                                   min_new_tokens=new_tokens)}
        speed = {name: batch * new_tokens / min(sampling.timed(run, seed)[0] for seed in range(2))
                 for name, run in runs.items()}
        rows[f"sampling_batch{batch}_tokens_per_second"] = {**speed, "ratio": speed["tarflow"] / speed["gpt2"]}
    return rows


def mock_dense(coupling, x, features):
    """The coupling's dense frozen transform (pruning off)."""
    from unittest import mock
    with mock.patch("modeling_tarflow.couplings.uses_pruned_transform", lambda _: False):
        return coupling(x, features)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = True
    print(f"resolved settings: {vars(args)}", flush=True)
    run = Run(args)
    run.section("round_trip", lambda: round_trip_check(args), 30)
    for shape in args.plan["shapes"]:
        run.section(f"training_{shape}", lambda shape=shape: time_training(shape, args, compiled=False), 60)
    run.section("mixd_vocabulary", lambda: mixd_vocabulary(args), 90)
    built = {}
    run.section("sampling", lambda: time_sampling(args, built, []), 150)
    for shape in args.plan["compiled_shapes"]:
        run.section(f"training_{shape}_compiled", lambda shape=shape: time_training(shape, args, compiled=True), 100)
    run.section("sampling_compiled_inverse", lambda: time_sampling(
        args, built, ["--batch_sizes", "1", "--patch_sizes", args.plan["compiled_patch_size"], "--compile_backend",
                      args.plan["compile_backend"]]), 90)
    if not args.dry:                       # transformers compiles with inductor: minutes on a CPU
        run.section("gpt2_generate_static_cache_compiled", lambda: compiled_gpt2_generate(args), 60)
    return run.result


if __name__ == "__main__":
    main()
