"""Build a small TarFlowLM, score a sentence with its NELBO, sample from it, and reload it the Hub way.

    python examples/score_and_sample.py
"""

import math
import tempfile

import torch
from transformers import AutoModel

from modeling_tarflow import TarFlowConfig, TarFlowForCausalFlowLM

ALPHABET = "abcdefghijklmnopqrstuvwxyz "


def main():
    torch.manual_seed(0)
    config = TarFlowConfig(vocab_size=27, latent_dim=5, patch_size=2, hidden_size=64, num_attention_heads=2,
                           max_position_embeddings=64,
                           flow_layers=[{"coupling": "mixture_rosenblatt", "num_layers": 2},
                                        {"coupling": "mixture_cdf", "num_mixtures": 4, "num_layers": 2}])
    model = TarFlowForCausalFlowLM(config).eval()
    text = "in the beginning god created the heaven and the earth"
    text = text + " " * (-len(text) % config.patch_size)
    ids = torch.tensor([[ALPHABET.index(c) for c in text]])
    out = model(ids)
    print(f"untrained model, NELBO bound: {out.loss.item() / math.log(2):.3f} bits/char "
          f"(uniform over 27 symbols: {math.log2(27):.3f})")
    sample = model.generate(max_new_tokens=32, num_return_sequences=2, seed=0)
    for row in sample:
        print("sample:", "".join(ALPHABET[i] for i in row.tolist()))
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        reloaded = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        same = torch.equal(reloaded.generate(max_new_tokens=32, seed=0), model.generate(max_new_tokens=32, seed=0))
        print(f"saved with save_pretrained and reloaded with AutoModel: identical samples = {same}")


if __name__ == "__main__":
    main()
