"""TarFlowLM: language modeling in continuous space with transformer-based autoregressive flows."""

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
