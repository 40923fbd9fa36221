"""TarFlowLM (arXiv 2507.00425): language modeling in continuous space with transformer-based autoregressive flows —
tokens x → codebook latents z ~ q(z|x) → stacked flows u = f(z) ~ N(0, I), decoded by the tied p(x|z)."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration_tarflow import TarFlowConfig
from .generation import TarFlowGenerateOutput, TarFlowGenerationConfig
from .modeling_tarflow import CheckpointMismatchError, TarFlowForCausalFlowLM, TarFlowOutput, TarFlowPreTrainedModel
from .input_checks import TokenIdDtypeError

# In-process auto classes (installed package) and auto_map + copied code on save (trust_remote_code loads).
AutoConfig.register(TarFlowConfig.model_type, TarFlowConfig, exist_ok=True)
AutoModel.register(TarFlowConfig, TarFlowForCausalFlowLM, exist_ok=True)
AutoModelForCausalLM.register(TarFlowConfig, TarFlowForCausalFlowLM, exist_ok=True)  # for pipeline("text-generation")
TarFlowConfig.register_for_auto_class()
TarFlowForCausalFlowLM.register_for_auto_class("AutoModel")

__all__ = [
    "CheckpointMismatchError",
    "TarFlowConfig",
    "TarFlowGenerateOutput",
    "TarFlowGenerationConfig",
    "TarFlowForCausalFlowLM",
    "TarFlowOutput",
    "TarFlowPreTrainedModel",
    "TokenIdDtypeError",
]
