"""Data-parallel sanity check: every process should have trained on different blocks and hold the same weights."""

import hashlib

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object


def weights_sha256(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, parameter in model.named_parameters():
        digest.update(name.encode())
        digest.update(parameter.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def replica_fingerprints(accelerator: Accelerator, model: torch.nn.Module, data_sha256: str) -> list[dict]:
    """One entry per process: the SHA-256 of the blocks it trained on (since it started) and of its weights.
    Prints a warning if the weights differ, which would mean gradients were not synchronised."""
    mine = {"process": accelerator.process_index, "data_sha256": data_sha256, "weights_sha256": weights_sha256(model)}
    replicas = gather_object([mine])
    if len({replica["weights_sha256"] for replica in replicas}) > 1:
        accelerator.print("WARNING: the processes' weights differ: gradients were not synchronised")
    return replicas
