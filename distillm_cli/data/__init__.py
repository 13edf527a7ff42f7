"""Instruction data.

    formats.py   record formats, prompt templates, token ids with a loss mask (Example)
    batches.py   padding into batches, fixed validation batches, the resumable shuffled stream
    sources.py   where records come from: toy, jsonl, hub, generations.jsonl, LM text (load_split)
    toy.py       the embedded synthetic tasks of the demo
    smollm2.py   the shipped everyday prompts of data=smollm2 (assets/smollm2_prompts.jsonl)
"""
