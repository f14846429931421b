#!/usr/bin/env python3
"""Tiny random encoders of the families sw2s runs through candle-transformers (DistilBERT,
XLM-RoBERTa, ModernBERT), with reference features from Hugging Face transformers, for the
parity test (tests/e2e/model.rs). The weights are random (seeded) and small enough to commit;
what is tested is the architecture code, weight naming, masking and pooling, not knowledge.

Usage:
    python3 -m pip install torch transformers
    python3 scripts/reference_encoders.py tests/fixtures/encoders

Writes DIR/<family>/{config.json, model.safetensors} and DIR/reference.json (token ids per
text, and the mean-pooled, L2-normalised last hidden state of each text run alone).
"""
import json
import os
import sys

import torch
from transformers import (DistilBertConfig, DistilBertModel, ModernBertConfig, ModernBertModel,
                          XLMRobertaConfig, XLMRobertaModel)

VOCAB = 64
# Token ids as a tokenizer would give them: [CLS]=2 ... [SEP]=3, lengths 3 to 40.
TEXTS = [[2] + [5 + (i * 7 + j * 3) % (VOCAB - 5) for j in range(n)] + [3]
         for i, n in enumerate([1, 4, 9, 17, 25, 38])]


def families():
    common = dict(vocab_size=VOCAB, pad_token_id=0)
    yield "distilbert", DistilBertModel(DistilBertConfig(
        dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64, **common))
    yield "xlm-roberta", XLMRobertaModel(XLMRobertaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=66, type_vocab_size=1, **common), add_pooling_layer=False)
    yield "modernbert", ModernBertModel(ModernBertConfig(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, global_attn_every_n_layers=3, local_attention=16,
        bos_token_id=2, eos_token_id=3, sep_token_id=3, cls_token_id=2, **common))


def main() -> None:
    out = sys.argv[1]
    torch.manual_seed(0)
    reference = {"texts": TEXTS, "families": {}}
    for name, model in families():
        model.eval()
        # Random LayerNorm gains and biases too, so a missing weight cannot go unnoticed.
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        folder = os.path.join(out, name)
        model.save_pretrained(folder, safe_serialization=True)
        features = []
        with torch.no_grad():
            for ids in TEXTS:
                x = torch.tensor([ids])
                h = model(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state[0]
                v = h.mean(0)
                features.append([round(float(t), 7) for t in v / v.norm()])
        reference["families"][name] = features
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(reference, f)


if __name__ == "__main__":
    main()
