#!/usr/bin/env python3
"""Reference features for the decoder-LM parity test: the last token's final hidden state
(after the model's final norm), and the mean of every token's but BOS (sw2s's
`--decoder-pooling mean`), from Hugging Face transformers, which reads the GGUF file,
dequantizes it to float32 and builds its tokenizer from the GGUF metadata.

Usage:
    python3 -m pip install torch transformers gguf
    python3 scripts/reference_decoder.py FILE.gguf > tests/fixtures/NAME_reference.json

sw2s runs the quantized weights (activations quantized to 8 bits per block in candle's
matmuls), so the test allows a stated tolerance against this float reference.
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

SENTENCES = [
    "A gripping, beautifully acted film.",
    "the movie was a complete waste of time .",
    "Q: What do plants absorb from the air? A: carbon dioxide",
    "Q: What is the chemical symbol for gold? A: Ag",
    "Héllo wörld — naïve café façade!",
    "I love it 😀 but the ending... meh?!",
    "UPPER CASE AND lower case Mixed, 12345 and 3.14",
    "x",
    "It's not that it's bad; it's that it isn't anything at all, really.",
    "Mitochondria are the powerhouse of the cell, producing ATP through oxidative phosphorylation.",
]


def main() -> None:
    path = sys.argv[1]
    folder, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
    model.eval()
    rows = []
    with torch.no_grad():
        for text in SENTENCES:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            out = model(input_ids=ids, output_hidden_states=True)
            states = out.hidden_states[-1][0]
            skip = 1 if len(ids[0]) > 1 and ids[0, 0].item() == tokenizer.bos_token_id else 0
            rows.append({
                "text": text,
                "ids": ids[0].tolist(),
                "last_token": [round(float(x), 6) for x in states[-1]],
                "mean": [round(float(x), 6) for x in states[skip:].mean(dim=0)],
            })
    json.dump({"file": name, "transformers": __import__("transformers").__version__,
               "torch": torch.__version__, "rows": rows}, sys.stdout)


if __name__ == "__main__":
    main()
