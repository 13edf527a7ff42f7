"""Instruction and chat data.

    formats.py   record shapes, templates (auto / chat / alpaca / compact), token ids with a loss mask (Example)
    chat.py      messages / ShareGPT turns rendered with the tokenizer's chat template, its end-of-turn token
    batches.py   padding into batches, fixed validation batches, the resumable shuffled stream
    sources.py   where records come from: toy, jsonl, any Hugging Face dataset, generations.jsonl, LM text
    toy.py       the embedded synthetic tasks of the demo
    smollm2.py   the shipped everyday prompts of data=smollm2 (assets/smollm2_prompts.jsonl)
"""
