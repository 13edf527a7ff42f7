"""Preflight checks: what must hold between the models and the data before any work starts.

`distillm check` prints them as a table with one rendered example and its loss mask;
every other stage runs the same checks first and stops on a problem (exit 2, one line
per problem, each naming its fix). Only configs and tokenizers are read, no weights.

    vocabulary       teacher and student tokenizers map every token to the same id
    special tokens   the same EOS / PAD / BOS / UNK
    chat template    the same template, so both models see the same text
    embedding rows   each model has a row for every token (padded rows are reported)
    context          data.max_length fits each model's context window
    template         how records render (chat, alpaca, compact) and the token that ends a response
    example          one record of the stage's split, rendered, with the tokens the loss counts
    end of turn      a chat response ends with the template's end-of-turn token
    teacher cache    teacher_cache= matches the run: tokenizer, template, temperature, every example
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .data.formats import IGNORE, record_format
from .errors import UserError

# Which models each stage loads, and which split it reads first.
STAGE_ROLES = {"sft-teacher": ("teacher",), "sft-student": ("student",), "distill": ("teacher", "student"),
               "check": ("teacher", "student"), "evaluate": ("student",), "cache-teacher": ("teacher",)}
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")
SPECIAL_TOKENS = ("eos_token", "pad_token", "bos_token", "unk_token")


@dataclass
class Findings:
    """Rows for the table and the problems found (each a line that names its fix)."""

    rows: list[list[str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    example: str = ""

    def ok(self, check: str, result: str) -> None:
        self.rows.append([check, result, "ok"])

    def note(self, check: str, result: str) -> None:
        self.rows.append([check, result, "note"])

    def problem(self, check: str, result: str, fix: str) -> None:
        self.rows.append([check, result, "PROBLEM"])
        self.problems.append(fix)


def stage_roles(cfg) -> tuple[str, ...]:
    if cfg.stage == "generate-student":
        return ("teacher", "student") if cfg.generate.pairs else (cfg.generate.source,)
    if cfg.stage == "evaluate" and cfg.eval.models:
        return ()  # each scored model is loaded (and refused) on its own
    if cfg.teacher_cache and cfg.stage in ("distill", "check"):
        return ("student",)  # the teacher is the cache: checked against the student's tokenizer
    return STAGE_ROLES.get(cfg.stage, ())


def stage_split(cfg) -> tuple[str, bool]:
    """The split the stage reads first, and whether its records need responses."""
    data = cfg.data
    if cfg.stage == "sft-teacher":
        return data.teacher_split, True
    if cfg.stage == "generate-student":
        return cfg.generate.split or data.generate_split, False
    if cfg.stage == "evaluate":
        return cfg.eval.split or data.test_split, True
    return data.train_split, True


def model_facts(cfg, role: str, tokenizer) -> tuple[str, int, int | None]:
    """(source, embedding rows, context length) of a model, from its config alone."""
    from .models import presets
    from .models.loading import model_source

    source = model_source(cfg, role)
    if presets.is_in_memory(source):
        from .models.tiny import TINY_PRESETS

        return source, len(tokenizer), TINY_PRESETS[source]["n_positions"]
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read the config of {role} model '{source}' ({type(error).__name__}); point "
                        f"{role}_dir / model.{role} at a Hugging Face model dir") from error
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    context = next((getattr(text, key) for key in CONTEXT_KEYS if getattr(text, key, None)), None)
    return source, int(text.vocab_size), context


def check_tokenizers(findings: Findings, cfg, tokenizers: dict) -> None:
    from .models.loading import model_source

    if len(tokenizers) < 2:
        return
    sources = {role: model_source(cfg, role) for role in tokenizers}
    teacher, student = tokenizers["teacher"], tokenizers["student"]
    if teacher.get_vocab() == student.get_vocab():
        findings.ok("vocabulary", f"shared, {len(teacher)} tokens")
    else:
        findings.problem("vocabulary", f"teacher {len(teacher)} vs student {len(student)} tokens",
                         f"teacher '{sources['teacher']}' ({len(teacher)} tokens) and student '{sources['student']}' "
                         f"({len(student)} tokens) use different tokenizers; token-level distillation needs one "
                         "shared vocabulary: pick a student from the teacher's model family")
    differ = [name for name in SPECIAL_TOKENS if getattr(teacher, name) != getattr(student, name)]
    if differ:
        findings.problem("special tokens", "differ: " + ", ".join(differ),
                         f"teacher and student tokenizers differ in {', '.join(differ)}; give both the teacher's "
                         "tokenizer (model.tokenizer=<teacher dir>)")
    else:
        findings.ok("special tokens", ", ".join(f"{n.split('_')[0]} {getattr(teacher, n)!r}" for n in SPECIAL_TOKENS
                                                if getattr(teacher, n)))
    if (teacher.chat_template or "") != (student.chat_template or ""):
        findings.problem("chat template", "teacher and student differ",
                         "teacher and student chat templates differ, so they would see different text; give both "
                         "the teacher's tokenizer (model.tokenizer=<teacher dir>)")
    else:
        findings.ok("chat template", "shared" if teacher.chat_template else "none (plain-text templates only)")


def check_models(findings: Findings, cfg, tokenizers: dict) -> None:
    for role, tokenizer in tokenizers.items():
        source, rows, context = model_facts(cfg, role, tokenizer)
        if rows < len(tokenizer):
            findings.problem(f"{role} embedding rows", f"{rows} rows < {len(tokenizer)} tokens",
                             f"{role} '{source}' has {rows} embedding rows for {len(tokenizer)} tokens; resize its "
                             "embeddings (model.resize_token_embeddings) or use its own tokenizer")
        elif rows > len(tokenizer):
            findings.note(f"{role} embedding rows", f"{rows} rows: {rows - len(tokenizer)} padded rows, never sampled")
        else:
            findings.ok(f"{role} embedding rows", f"{rows}, one per token")
        if context is not None and cfg.data.max_length > context:
            findings.problem(f"{role} context", f"{context} < data.max_length={cfg.data.max_length}",
                             f"data.max_length={cfg.data.max_length} exceeds {role} '{source}' context of {context} "
                             f"tokens; set data.max_length={context} or less")
        else:
            findings.ok(f"{role} context", f"{context or 'unknown'} tokens >= data.max_length={cfg.data.max_length}")


def render_mask(tokenizer, example) -> str:
    """The example's text with the tokens the loss counts between ⟦ and ⟧."""
    ids, labels = example.input_ids.tolist(), example.labels.tolist()
    counted = [False] + [label != IGNORE for label in labels[:-1]]  # token t+1 is the target of position t
    pieces, inside = [], False
    for token, learn in zip(ids, counted):
        if learn != inside:
            pieces.append("⟦" if learn else "⟧")
            inside = learn
        pieces.append(tokenizer.decode([token]))
    return "".join(pieces) + ("⟧" if inside else "")


def check_example(findings: Findings, cfg, tokenizer) -> None:
    from .data.sources import load_split

    fmt = record_format(cfg, tokenizer)
    findings.ok("template", fmt.describe())
    split, need_responses = stage_split(cfg)
    record = load_split(cfg, split, need_responses=need_responses)[0]
    if record.get("output") is None:  # prompts without answers: show the prompt the model continues
        text = fmt.prompt_text(record)
        findings.ok("example", f"split '{split}': a prompt of {len(fmt.prompt_ids(record))} tokens (no response)")
        findings.example = text + "⟦…the model answers here⟧"
        return
    example = fmt.encode(record)
    counted = int((example.labels != IGNORE).sum())
    findings.ok("example", f"split '{split}': {len(example.input_ids)} tokens, {counted} counted by the loss")
    findings.example = render_mask(tokenizer, example)
    last_target = example.labels[example.labels != IGNORE][-1:].tolist()
    if fmt.template == "chat":
        end = tokenizer.convert_ids_to_tokens(fmt.end_id)
        if last_target == [fmt.end_id]:
            findings.ok("end of turn", f"the response ends with {end!r}")
        elif record.get("truncated"):
            findings.note("end of turn", "this generated response was cut by the length limit: no end token")
        elif len(example.input_ids) >= cfg.data.max_length:
            findings.note("end of turn", f"cut by data.max_length={cfg.data.max_length} before {end!r}")
        else:
            findings.problem("end of turn", f"the response does not end with {end!r}",
                             "the chat template does not close the assistant turn with a special token; use a "
                             "model whose template does, or data.template=alpaca")


def run_checks(cfg) -> Findings:
    from .models.loading import load_tokenizer

    findings = Findings()
    roles = stage_roles(cfg)
    tokenizers = {role: load_tokenizer(cfg, role) for role in roles}
    check_tokenizers(findings, cfg, tokenizers)
    check_models(findings, cfg, tokenizers)
    tokenizer = tokenizers.get("teacher") or tokenizers.get("student")
    if tokenizer is not None:
        check_example(findings, cfg, tokenizer)
        if cfg.teacher_cache and cfg.stage in ("distill", "check"):
            check_teacher_cache(findings, cfg, tokenizer)
    return findings


def check_teacher_cache(findings: Findings, cfg, tokenizer) -> None:
    """teacher_cache: the same tokenizer, template and temperature, and a row for every example the run reads."""
    from .teacher.cache import cache_problems, read_manifest

    problems = cache_problems(cfg, tokenizer)
    for problem in problems:
        findings.problem("teacher cache", "does not fit this run", problem)
    if not problems:
        manifest = read_manifest(cfg.teacher_cache)
        findings.ok("teacher cache", f"k={manifest['k']}, T={manifest['temperature']}, {manifest['examples']} "
                                     f"examples, {manifest['positions']} positions; no teacher model is loaded")


def enforce(cfg) -> None:
    """The stage's preflight: stop before any work if a check found a problem."""
    findings = run_checks(cfg)
    if findings.problems:
        raise UserError(*findings.problems)
