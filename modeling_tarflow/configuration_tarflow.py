"""TarFlowLM configuration: every model hyper-parameter in one validated `PretrainedConfig` — the codebook (§3.1),
the stacked flows and their couplings (§3.2–3.3), patches and channel mixing (§4, Alg. 2)."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import hashlib
import inspect
import json
import math

from transformers import GenerationConfig, PretrainedConfig

COUPLINGS = ("affine", "mixture_cdf", "mixture_rosenblatt")
DIRECTIONS = ("l2r", "r2l")

# Defaults filled into every `flow_layers` entry, per coupling (the configurations of §4).
_LAYER_DEFAULTS = {
    "affine": {"num_layers": 2, "autoregressive_dims": False},
    "mixture_cdf": {"num_layers": 2, "num_mixtures": 64, "autoregressive_dims": True},
    "mixture_rosenblatt": {"num_layers": 2},
}
_LAYER_KEYS = {
    "affine": {"coupling", "num_layers", "direction", "autoregressive_dims"},
    "mixture_cdf": {"coupling", "num_layers", "direction", "autoregressive_dims", "num_mixtures"},
    "mixture_rosenblatt": {"coupling", "num_layers", "direction", "num_mixtures", "tie_codebook"},
}

# A Mix-d model (§4, "Model Configurations"): a tied Mixture-Rosenblatt layer, then two Mix-1 layers with V = 2
# mixtures.
DEFAULT_FLOW_LAYERS = (
    {"coupling": "mixture_rosenblatt", "num_layers": 4},
    {"coupling": "mixture_cdf", "num_mixtures": 2, "num_layers": 4},
    {"coupling": "mixture_cdf", "num_mixtures": 2, "num_layers": 4},
)


# The fields that define the function the weights compute. A changed value with unchanged tensor shapes (a flipped
# direction, channel mixing off, another log-scale bound) would load silently into a different model, so their hash
# is saved in config.json and checked at load. Initialisation, dropout and memory budgets are not among them.
ARCHITECTURE_FIELDS = ("vocab_size", "latent_dim", "patch_size", "hidden_size", "num_attention_heads",
                       "intermediate_size", "max_position_embeddings", "flow_layers", "channel_mixing",
                       "maf_hidden_size", "log_scale_bound", "layer_norm_eps")
_FLOAT_FIELDS = ("log_scale_bound", "layer_norm_eps")

# Root-finder settings older config.json files carry: kept as attributes when present (see `RootFinding.for_model`).
LEGACY_SAMPLING_KEYS = ("root_tolerance", "root_max_iterations")

# Keyword arguments `PretrainedConfig` itself takes or writes into config.json, beyond its dataclass fields, plus the
# keys older transformers versions wrote into every config.json.
_TRANSFORMERS_KEYS = frozenset({
    "_name_or_path", "name_or_path", "_commit_hash", "model_type", "auto_map", "torch_dtype", "num_labels",
    "attn_implementation", "experts_implementation", "output_attentions", "per_layer_config",
    "_attn_implementation_internal", "_experts_implementation_internal", "tie_word_embeddings", "use_cache",
    "tokenizer_class", "prefix", "task_specific_params", "finetuning_task", "is_decoder", "add_cross_attention",
    "cross_attention_hidden_size", "tie_encoder_decoder", "torchscript", "pruned_heads", "use_bfloat16",
})


class TarFlowConfig(PretrainedConfig):
    r"""Configuration of a TarFlowLM model (Zhang et al., 2025, arXiv 2507.00425).

    Tokens x ∈ {0..V−1} are encoded to z ∈ R^d by a Gaussian codebook; `flow_layers` stacked transformer
    autoregressive flows map patches of P tokens (vectors of P·d channels) to u ~ N(0, I).

    Args:
        vocab_size (`int`): V, the number of token ids (27 for text8, 50257 for GPT-2 BPE).
        latent_dim (`int`): d, the latent dimension per token (5 for text8, 16 for OpenWebText).
        patch_size (`int`): P, tokens per patch; the flow transformers run over T/P positions.
        hidden_size (`int`): width of every flow transformer.
        num_attention_heads (`int`): attention heads of every flow transformer.
        intermediate_size (`int`, *optional*): MLP width; defaults to 4 · `hidden_size`.
        max_position_embeddings (`int`): longest sequence in tokens (a multiple of `patch_size`).
        flow_layers (`list[dict]`): one dict per flow layer, from the z side to the u side. Keys:
            `coupling` (`"affine" | "mixture_cdf" | "mixture_rosenblatt"`), `num_layers` (transformer layers),
            `direction` (`"l2r" | "r2l"`, default alternating from `"l2r"`), `num_mixtures` (mixture components),
            `autoregressive_dims` (MAF head over the patch channels; affine and mixture_cdf), `tie_codebook`
            (mixture_rosenblatt: use the encoder codebook as components; default for the first layer).
        channel_mixing (`bool`): apply ChannelMix (Algorithm 2: even channels, then odd) between flow layers.
        maf_hidden_size (`int`): D of the MAF-MLP head (§4, "Model Configurations"); each channel gets D/2 hidden
            units.
        log_scale_bound (`float`): mixture log-scales are soft-clipped to ±bound by bound·tanh(x / bound).
        codebook_init_std (`float`): std of the initial codebook means μ_k.
        codebook_init_sigma (`float`): initial codebook scale σ_k.
        dropout (`float`): dropout on attention and MLP outputs.
        layer_norm_eps (`float`), initializer_range (`float`): as in GPT-2.
        rosenblatt_chunk_elements (`int`): memory budget of a Mix-d layer's forward: the most per-dimension terms
            (batch · positions · P · K · d) held at once; past it, positions go in chunks, each recomputed in
            backward (2²⁶ ≈ 256 MB in float32).
        codebook_direct_distance_max_entries (`int`): up to this many K·d entries, codebook distances ‖z − μ_k‖²
            are computed directly; above it, by the matmul expansion (see `GaussianCodebook`).
        root_tolerance (`float`, *optional*), root_max_iterations (`int`, *optional*): read from older config.json
            files only. The root finder's stopping rule is a sampling setting (`TarFlowGenerationConfig`), which
            falls back to these when a saved config carries them, so such a model samples as before.
        architecture_fingerprint (`str`, *optional*): the hash of the `ARCHITECTURE_FIELDS` this config was saved
            with (written by `to_dict`, so every config.json carries it); `from_pretrained` refuses weights whose
            config.json fields no longer match it. None (a config built in code) records the current fields.

    Any other keyword must be one `PretrainedConfig` knows (e.g. `architectures`, `dtype`, `*_token_id`); an unknown
    one (a misspelt field) is an error rather than a silently stored attribute.
    """

    model_type = "tarflow"

    def __init__(
        self,
        vocab_size: int = 27,
        latent_dim: int = 5,
        patch_size: int = 1,
        hidden_size: int = 256,
        num_attention_heads: int = 4,
        intermediate_size: int | None = None,
        max_position_embeddings: int = 256,
        flow_layers: list[dict] | None = None,
        channel_mixing: bool = True,
        maf_hidden_size: int = 128,
        log_scale_bound: float = 7.0,
        codebook_init_std: float = 1.0,
        codebook_init_sigma: float = 0.5,
        dropout: float = 0.0,
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        rosenblatt_chunk_elements: int = 1 << 26,
        codebook_direct_distance_max_entries: int = 1 << 16,
        architecture_fingerprint: str | None = None,
        **kwargs,
    ):
        for key in LEGACY_SAMPLING_KEYS:
            if kwargs.get(key) is not None:
                setattr(self, key, kwargs.pop(key))
        _check_known_keys(kwargs)
        self.vocab_size = vocab_size
        self.latent_dim = latent_dim
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size if intermediate_size is not None else 4 * hidden_size
        self.max_position_embeddings = max_position_embeddings
        self.channel_mixing = channel_mixing
        self.maf_hidden_size = maf_hidden_size
        self.log_scale_bound = log_scale_bound
        self.codebook_init_std = codebook_init_std
        self.codebook_init_sigma = codebook_init_sigma
        self.dropout = dropout
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.rosenblatt_chunk_elements = rosenblatt_chunk_elements
        self.codebook_direct_distance_max_entries = codebook_direct_distance_max_entries
        self._validate_scalars()
        raw_layers = DEFAULT_FLOW_LAYERS if flow_layers is None else flow_layers
        self.flow_layers = normalize_flow_layers(raw_layers, vocab_size)
        self.architecture_fingerprint = architecture_fingerprint or self.current_architecture_fingerprint()
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    def current_architecture_fingerprint(self) -> str:
        """A hash of the `ARCHITECTURE_FIELDS` as they are now (floats as floats, so 7 and 7.0 agree)."""
        values = {name: getattr(self, name) for name in ARCHITECTURE_FIELDS}
        values.update({name: float(values[name]) for name in _FLOAT_FIELDS})
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:16]

    def check_architecture_fingerprint(self) -> None:
        """Raise if the architecture fields differ from those this config was saved with (an edited config.json,
        or a shape-preserving override passed to `from_pretrained`): the weights were trained for the other."""
        if self.architecture_fingerprint != self.current_architecture_fingerprint():
            raise ValueError(
                f"config architecture_fingerprint {self.architecture_fingerprint} does not match its fields "
                f"({self.current_architecture_fingerprint()}): one of {list(ARCHITECTURE_FIELDS)} was changed after "
                "the weights were saved, so they would load into a different model. Restore the saved values; to "
                "start a new model from these weights on purpose, build it from the new config and call "
                "load_state_dict")

    def to_dict(self) -> dict:
        output = super().to_dict()
        output["architecture_fingerprint"] = self.current_architecture_fingerprint()
        return output

    def _validate_scalars(self) -> None:
        positive_ints = ("vocab_size", "latent_dim", "patch_size", "hidden_size", "num_attention_heads",
                         "intermediate_size", "max_position_embeddings", "maf_hidden_size", "rosenblatt_chunk_elements",
                         "codebook_direct_distance_max_entries", "root_max_iterations")
        for name in positive_ints:
            value = getattr(self, name, 1)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TarFlowConfig.{name} must be a positive integer, got {value!r}")
        positive_floats = ("log_scale_bound", "codebook_init_std", "codebook_init_sigma", "layer_norm_eps",
                           "initializer_range", "root_tolerance")
        for name in positive_floats:
            value = getattr(self, name, 1.0)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"TarFlowConfig.{name} must be a positive finite number, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TarFlowConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"TarFlowConfig.hidden_size ({self.hidden_size}) must be divisible by "
                             f"num_attention_heads ({self.num_attention_heads})")
        if self.max_position_embeddings % self.patch_size:
            raise ValueError(f"TarFlowConfig.max_position_embeddings ({self.max_position_embeddings}) must be a "
                             f"multiple of patch_size ({self.patch_size})")
        if not isinstance(self.channel_mixing, bool):
            raise ValueError(f"TarFlowConfig.channel_mixing must be a bool, got {self.channel_mixing!r}")

    @property
    def patch_channels(self) -> int:
        """P·d: the size of one patch vector, the unit each flow transformer position models."""
        return self.patch_size * self.latent_dim

    @property
    def num_flow_layers(self) -> int:
        return len(self.flow_layers)

    @property
    def num_transformer_layers(self) -> int:
        return sum(layer["num_layers"] for layer in self.flow_layers)


def _check_known_keys(kwargs: dict) -> None:
    """Raise naming any keyword that is neither a TarFlowConfig field nor one `PretrainedConfig` handles."""
    unknown = sorted(key for key in kwargs if key not in _known_transformers_keys() and not key.endswith("_token_id"))
    if unknown:
        fields = [name for name in inspect.signature(TarFlowConfig.__init__).parameters if name not in ("self", "kwargs")]
        hints = {key: difflib.get_close_matches(key, fields, n=1) for key in unknown}
        hint = "; ".join(f"did you mean {match[0]!r} for {key!r}?" for key, match in hints.items() if match)
        raise ValueError(f"TarFlowConfig got unknown keyword argument(s) {unknown}" + (f" ({hint})" if hint else "")
                         + f"; its fields are {fields}")


@functools.cache
def _known_transformers_keys() -> frozenset:
    fields = {field.name for field in dataclasses.fields(PretrainedConfig)}
    return _TRANSFORMERS_KEYS | fields | set(GenerationConfig._get_default_generation_params())


def normalize_flow_layers(flow_layers, vocab_size: int) -> list[dict]:
    """Validate `flow_layers` and return a copy with every default written out (so config.json is explicit)."""
    if not isinstance(flow_layers, (list, tuple)) or len(flow_layers) == 0:
        raise ValueError(f"TarFlowConfig.flow_layers must be a non-empty list of dicts, got {flow_layers!r}")
    return [_normalize_layer(index, layer, vocab_size) for index, layer in enumerate(flow_layers)]


def _normalize_layer(index: int, layer, vocab_size: int) -> dict:
    where = f"TarFlowConfig.flow_layers[{index}]"
    if not isinstance(layer, dict):
        raise ValueError(f"{where} must be a dict, got {layer!r}")
    coupling = layer.get("coupling")
    if coupling not in COUPLINGS:
        raise ValueError(f"{where}['coupling'] must be one of {COUPLINGS}, got {coupling!r}")
    unknown = set(layer) - _LAYER_KEYS[coupling]
    if unknown:
        raise ValueError(f"{where} has unknown key(s) {sorted(unknown)} for coupling {coupling!r}; "
                         f"allowed: {sorted(_LAYER_KEYS[coupling])}")
    out = {**copy.deepcopy(_LAYER_DEFAULTS[coupling]), **copy.deepcopy(layer)}
    out.setdefault("direction", DIRECTIONS[index % 2])
    if coupling == "mixture_rosenblatt":
        out.setdefault("tie_codebook", index == 0)
        if out["tie_codebook"]:
            if out.setdefault("num_mixtures", vocab_size) != vocab_size:
                raise ValueError(f"{where}['num_mixtures'] must equal vocab_size ({vocab_size}) when the layer "
                                 f"is tied to the encoder codebook, got {out['num_mixtures']!r}")
        else:
            out.setdefault("num_mixtures", 64)
    _check_layer_values(where, out)
    return out


def _check_layer_values(where: str, layer: dict) -> None:
    for key in ("num_layers", "num_mixtures"):
        if key in layer:
            value = layer[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{where}['{key}'] must be a positive integer, got {value!r}")
    if layer["direction"] not in DIRECTIONS:
        raise ValueError(f"{where}['direction'] must be one of {DIRECTIONS}, got {layer['direction']!r}")
    for key in ("autoregressive_dims", "tie_codebook"):
        if key in layer and not isinstance(layer[key], bool):
            raise ValueError(f"{where}['{key}'] must be a bool, got {layer[key]!r}")


__all__ = ["TarFlowConfig", "COUPLINGS", "DIRECTIONS", "ARCHITECTURE_FIELDS"]
