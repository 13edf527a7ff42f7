"""The user's own path: chat records, any Hugging Face dataset, generation that ends where the
model ends, and the preflight — on tiny Llama / Qwen2 chat pairs built here (chat template,
end-of-turn token other than EOS, a list of end tokens, padded embedding rows)."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from distillm_cli.config import GenerationConfig
from distillm_cli.data.formats import IGNORE, RecordFormat, normalise_record
from distillm_cli.data.sources import load_split
from distillm_cli.errors import UserError
from distillm_cli.generation import make_generator
from distillm_cli.generation.hf import generate
from tests.chat_models import build_chat_pair, messages_records, write_messages_dataset


@pytest.fixture(scope="module")
def qwen_pair(tmp_path_factory):
    return build_chat_pair(tmp_path_factory.mktemp("qwen"), arch="qwen2", padded_rows=16)


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory):
    return build_chat_pair(tmp_path_factory.mktemp("llama"), arch="llama", padded_rows=0)


def counted_text(tokenizer, example) -> list[str]:
    """The tokens the loss counts, decoded one by one."""
    ids, labels = example.input_ids.tolist(), example.labels.tolist()
    return [tokenizer.decode([ids[t + 1]]) for t in range(len(ids) - 1) if labels[t] != IGNORE]


CONVERSATION = {"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
                             {"role": "user", "content": "Two plus two?"}, {"role": "assistant", "content": "Four."}]}


def test_chat_record_renders_with_the_template_and_ends_with_end_of_turn(qwen_pair):
    tokenizer = AutoTokenizer.from_pretrained(qwen_pair[0])
    fmt = RecordFormat(tokenizer, "auto", max_prompt_length=256, max_length=512)
    record = normalise_record(CONVERSATION, "t")
    assert fmt.template == "chat" and tokenizer.convert_ids_to_tokens(fmt.end_id) == "<|im_end|>"
    assert fmt.end_id != tokenizer.eos_token_id
    expected_prompt = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi there"
                       "<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nTwo plus two?"
                       "<|im_end|>\n<|im_start|>assistant\n")
    assert fmt.prompt_text(record) == expected_prompt
    example = fmt.encode(record)
    assert "".join(counted_text(tokenizer, example)) == "Four.<|im_end|>"
    assert tokenizer.decode(example.input_ids[: example.prompt_len]) == expected_prompt
    everything = RecordFormat(tokenizer, "chat", max_prompt_length=256, max_length=512, train_on="all").encode(record)
    assert "".join(counted_text(tokenizer, everything)) == "Hello!<|im_end|>Four.<|im_end|>"
    assert everything.prompt_len == example.prompt_len  # generation still answers the last turn


def test_system_prompt_sharegpt_and_instruction_records(llama_pair):
    tokenizer = AutoTokenizer.from_pretrained(llama_pair[0])
    fmt = RecordFormat(tokenizer, "auto", max_prompt_length=256, max_length=512, system_prompt="Be brief.")
    sharegpt = normalise_record({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]},
                                "t")
    assert fmt.prompt_text(sharegpt) == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                                         "<|im_start|>assistant\n")
    instruction = normalise_record({"instruction": "Add.", "input": "1 2", "output": "3"}, "t")
    assert fmt.prompt_text(instruction).endswith("<|im_start|>user\nAdd.\n\n1 2<|im_end|>\n<|im_start|>assistant\n")
    assert "".join(counted_text(tokenizer, fmt.encode(instruction))) == "3<|im_end|>"
    plain = RecordFormat(tokenizer, "alpaca", max_prompt_length=256, max_length=512)
    assert counted_text(tokenizer, plain.encode(instruction))[-1] == tokenizer.eos_token


def test_bad_chat_records_are_one_line_errors(llama_pair):
    with pytest.raises(UserError, match="unknown role 'robot'"):
        normalise_record({"messages": [{"role": "robot", "content": "x"}]}, "f:1")
    with pytest.raises(UserError, match="unknown role"):
        normalise_record({"conversations": [{"from": "narrator", "value": "x"}]}, "f:1")
    from distillm_cli.models.tiny import build_char_tokenizer

    with pytest.raises(UserError, match="data.template=chat needs a tokenizer with a chat template"):
        RecordFormat(build_char_tokenizer(), "chat", max_prompt_length=8, max_length=16)
    assert normalise_record({"messages": [{"role": "user", "content": "x"}]}, "f:1")["output"] is None


def test_hf_dataset_from_save_to_disk_and_files_with_column_mapping(tmp_path, compose_cfg):
    folder = write_messages_dataset(tmp_path / "chats", n=12)
    cfg = compose_cfg("distill", "data=hf", f"data.hub_id={folder}", "data.valid_size=3")
    train, valid = load_split(cfg, "train"), load_split(cfg, "valid")
    assert (len(train), len(valid)) == (9, 3)
    assert train[0]["messages"] == normalise_record(messages_records(12)[3], "x")["messages"]
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(6)]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = compose_cfg("distill", "data=hf", f"data.hub_id={tmp_path / 'qa.jsonl'}", "data.valid_size=2",
                  "+data.columns.instruction=question", "+data.columns.output=answer")
    assert load_split(cfg, "train")[0] == {"instruction": "q2", "input": "", "output": "a2"}
    bad = compose_cfg("distill", "data=hf", f"data.hub_id={tmp_path / 'qa.jsonl'}", "+data.columns.output=missing")
    with pytest.raises(UserError, match="names column.* missing"):
        load_split(bad, "train")
    with pytest.raises(UserError, match="does not exist"):
        load_split(compose_cfg("distill", "data=hf", f"data.hub_id={tmp_path / 'nope'}"), "train")
    with pytest.raises(UserError, match="holds one split"):
        single = compose_cfg("distill", "data=hf", f"data.hub_id={folder}", "data.hub_valid_split=validation")
        load_split(single, "valid")


def test_generation_ignores_the_models_own_sampling_defaults_and_padded_rows(qwen_pair):
    tokenizer = AutoTokenizer.from_pretrained(qwen_pair[0])
    model = AutoModelForCausalLM.from_pretrained(qwen_pair[0]).eval()
    assert model.generation_config.repetition_penalty == 1.3  # the leaky defaults the model ships
    with torch.no_grad():  # make the padded rows the most likely tokens: they must still never be sampled
        model.lm_head.weight[len(tokenizer):] = model.lm_head.weight[: len(tokenizer)].abs().max() * 50
        model.lm_head.weight[len(tokenizer):] = model.lm_head.weight[len(tokenizer):].abs()
    generator = make_generator(model, GenerationConfig(do_sample=True, max_new_tokens=0), tokenizer, max_length=40)
    assert set(generator.stop_ids) == {tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id}
    prompts = [tokenizer("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")["input_ids"]] * 3
    responses = generator.generate(prompts, seed=1)
    assert all(max(r) < len(tokenizer) for r in responses)
    assert all(len(r) <= 40 - len(prompts[0]) for r in responses)  # 0: fill the room max_length leaves
    settings = generator.settings(prompts)
    assert settings["repetition_penalty"] == 1.0 and settings["top_k"] == 0
    # The same settings with the model's generation_config gone give the same samples: nothing leaked in.
    model.generation_config.repetition_penalty, model.generation_config.top_k = 1.0, None
    model.generation_config.temperature = 1.0
    assert generate(model, prompts, settings, seed=1, batch_size=32) == responses


def test_truncated_generations_get_no_end_token(qwen_pair, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(qwen_pair[0])
    fmt = RecordFormat(tokenizer, "chat", max_prompt_length=64, max_length=128)
    cut = fmt.encode(normalise_record({"prompt": "<|im_start|>user\nHi<|im_end|>\n", "response": "abc",
                                       "truncated": True}, "t"))
    done = fmt.encode(normalise_record({"prompt": "<|im_start|>user\nHi<|im_end|>\n", "response": "abc"}, "t"))
    assert counted_text(tokenizer, done)[-1] == "<|im_end|>"
    assert "<|im_end|>" not in "".join(counted_text(tokenizer, cut))[-10:]
    assert len(done.input_ids) == len(cut.input_ids) + 1


def check(compose_cfg, *overrides):
    from distillm_cli.checks import run_checks

    return run_checks(compose_cfg("check", *overrides))


def test_check_reports_padded_rows_context_and_the_example(qwen_pair, tmp_path, compose_cfg):
    folder = write_messages_dataset(tmp_path / "chats", n=8)
    base = [f"model.teacher={qwen_pair[0]}", f"model.student={qwen_pair[1]}", "model.name=qwen2-tiny", "data=hf",
            f"data.hub_id={folder}", "data.valid_size=2"]
    findings = check(compose_cfg, *base)
    assert not findings.problems, findings.problems
    rows = {row[0]: row for row in findings.rows}
    assert rows["teacher embedding rows"][2] == "note" and "16 padded rows" in rows["teacher embedding rows"][1]
    assert rows["end of turn"][2] == "ok"
    assert "⟦" in findings.example and findings.example.rstrip().endswith("<|im_end|>⟧")
    too_long = check(compose_cfg, *base, "data.max_length=4096")
    assert any("data.max_length=4096 exceeds teacher" in p for p in too_long.problems)


def test_check_refuses_pairs_that_render_differently(qwen_pair, llama_pair, tmp_path, compose_cfg):
    folder = write_messages_dataset(tmp_path / "chats", n=8)
    findings = check(compose_cfg, f"model.teacher={qwen_pair[0]}", f"model.student={llama_pair[1]}", "data=hf",
                     f"data.hub_id={folder}", "data.valid_size=2")
    assert any("chat templates differ" in p for p in findings.problems)


def test_several_references_stay_a_list_and_the_best_one_scores():
    from distillm_cli.data.formats import first_answer, references
    from distillm_cli.evaluation.metrics import exact_match, rouge_l

    record = normalise_record({"instruction": "Greet.", "output": ["Hi there!", "Hello, World!"]}, "t")
    assert record["output"] == ["Hi there!", "Hello, World!"] and first_answer(record["output"]) == "Hi there!"
    assert exact_match(["hello world"], [references(record["output"])]) == 1.0
    assert rouge_l(["hello world"], [references(record["output"])]) == 100.0


def test_a_chat_record_without_assistant_turn_cannot_train(tmp_path, compose_cfg):
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}]}) + "\n")
    cfg = compose_cfg("distill", "data=jsonl", f"data.path={path}", "data.valid_size=0")
    with pytest.raises(UserError, match="no response \\(an assistant turn"):
        load_split(cfg, "train")
    assert load_split(cfg, "train", need_responses=False)[0]["output"] is None  # a prompt to answer


def test_cli_bad_dataset_path_is_one_line_exit_2(tmp_path):
    from .conftest import run_cli

    result = run_cli("check", "data=hf", f"data.hub_id={tmp_path / 'missing' / 'chats'}")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "does not exist" in lines[0] and "Traceback" not in result.stderr


def test_generate_student_marks_responses_cut_by_the_limit(qwen_pair, tmp_path):
    from .conftest import run_cli

    folder = write_messages_dataset(tmp_path / "chats", n=8)
    run_dir = tmp_path / "gen"
    result = run_cli("generate-student", f"model.teacher={qwen_pair[0]}", f"model.student={qwen_pair[1]}", "data=hf",
                     f"data.hub_id={folder}", "data.valid_size=2", "generate=teacher", "generation.max_new_tokens=3",
                     "generate.max_prompts=4", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(line["prompt"].endswith("<|im_start|>assistant\n") for line in lines)
    # A random-init model rarely ends within 3 tokens: those responses are marked, not given an end token.
    assert all(isinstance(line["truncated"], bool) for line in lines) and any(line["truncated"] for line in lines)
    settings = json.loads((run_dir / "sampling.json").read_text())["transformers"]["teacher"]
    assert settings["max_new_tokens"] == 3 and settings["suppress_tokens"] == list(range(403, 419))


def test_distillm2_pairs_are_curated_on_chat_rendered_prompts(qwen_pair, tmp_path):
    """DistiLLM-2's curation as the authors run it: the prompt through the chat template, both models answer."""
    from .conftest import run_cli

    folder = write_messages_dataset(tmp_path / "chats", n=8)
    run_dir = tmp_path / "pairs"
    result = run_cli("generate-student", "experiment=distillm2", "generate.pairs=true", f"model.teacher={qwen_pair[0]}",
                     f"model.student={qwen_pair[1]}", "data=hf", f"data.hub_id={folder}", "data.valid_size=2",
                     "generation.max_new_tokens=4", "generate.max_prompts=3", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    for line in lines:
        assert line["prompt"].startswith("<|im_start|>") and line["prompt"].endswith("<|im_start|>assistant\n")
        assert {"teacher_response", "student_response", "teacher_truncated", "student_truncated"} <= set(line)
    assert lines[0]["sampling"]["temperature"] == 0.8 and lines[0]["sampling"]["top_p"] == 0.95
