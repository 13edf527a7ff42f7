"""Chat records: `messages` / ShareGPT lists, rendered with the tokenizer's own chat template.

A chat record is a list of turns `{role, content}` with roles system / user / assistant
(ShareGPT's `conversations` with `from` / `value` and roles human / gpt are mapped onto
them). The response is the last assistant turn; the prompt is every turn before it,
rendered by the chat template with its generation prompt, exactly the text the model
sees when it answers:

    prompt   = template(turns[:last], add_generation_prompt=True)
    response = template(turns[:last + 1])[len(prompt):], cut after the end-of-turn token

so the labelled response ends with the template's own end-of-turn token (ChatML's
`<|im_end|>`, Llama 3's `<|eot_id|>`), which is also where generation stops. With
`data.train_on=all` the earlier assistant turns are labelled too, each ended the same way.
"""
from __future__ import annotations

import functools

from ..errors import UserError

ROLES = ("system", "user", "assistant")
# ShareGPT's speaker names (and a few common spellings) onto the three roles.
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant", "bard": "assistant"}
TRAIN_ON = ("last", "all")

# A turn whose text can be found again in the rendered conversation (see end_of_turn_token).
_PROBE = "distillm probe answer 42"


def normalise_turns(raw_turns, where: str, *, sharegpt: bool = False) -> list[dict]:
    """[{role, content}] from a messages list (or a ShareGPT conversations list)."""
    if not isinstance(raw_turns, list) or not raw_turns:
        raise UserError(f"{where}: '{'conversations' if sharegpt else 'messages'}' must be a non-empty list of turns")
    turns = []
    for number, turn in enumerate(raw_turns):
        if not isinstance(turn, dict):
            raise UserError(f"{where}: turn {number} is not an object with role and content")
        if sharegpt:
            speaker = str(turn.get("from", "")).lower()
            role, content = SHAREGPT_ROLES.get(speaker, speaker), turn.get("value")
        else:
            role, content = turn.get("role"), turn.get("content")
        if role not in ROLES:
            raise UserError(f"{where}: turn {number} has unknown role '{role}'; roles are system, user, assistant"
                            f"{' (ShareGPT: system, human, gpt)' if sharegpt else ''}")
        turns.append({"role": role, "content": "" if content is None else str(content)})
    return turns


def last_assistant(turns: list[dict]) -> int | None:
    """Index of the last assistant turn (None: a prompt-only conversation)."""
    return next((i for i in range(len(turns) - 1, -1, -1) if turns[i]["role"] == "assistant"), None)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render(tokenizer, turns: list[dict], *, generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as error:  # noqa: BLE001 - a template's own error (e.g. Jinja raise_exception)
        raise UserError(f"the chat template refused a conversation ({type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else ''}); check the roles and their order") \
            from error


@functools.lru_cache(maxsize=16)
def _end_of_turn(tokenizer) -> str | None:
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}]
    full = render(tokenizer, turns, generation_prompt=False)
    tail = full[full.rfind(_PROBE) + len(_PROBE):]
    special = set(tokenizer.all_special_tokens) | {t.content for t in tokenizer.added_tokens_decoder.values()}
    # The first special token after the answer's text is the one that closes the turn.
    hits = [(tail.find(token), token) for token in special if token and token in tail]
    return min(hits)[1] if hits else None


def end_of_turn_token(tokenizer) -> str | None:
    """The special token the chat template closes an assistant turn with (None: no template, or none)."""
    return _end_of_turn(tokenizer) if has_chat_template(tokenizer) else None


def _cut_after(text: str, end_token: str | None) -> str:
    """The reply up to and including its end-of-turn token."""
    if end_token and end_token in text:
        return text[: text.index(end_token) + len(end_token)]
    return text


def chat_segments(tokenizer, turns: list[dict], train_on: str) -> list[tuple[str, bool]]:
    """The rendered conversation up to its last assistant turn as (text, trained) pieces.

    Untrained pieces are everything the template writes around the replies (roles,
    system prompt, generation prompts); trained pieces are the replies with their
    end-of-turn token. The pieces concatenate to the rendered prompt + last reply.
    """
    last = last_assistant(turns)
    end_token = end_of_turn_token(tokenizer)
    replies = [i for i, t in enumerate(turns) if t["role"] == "assistant"] if train_on == "all" else [last]
    segments, rendered = [], ""
    for index in replies:
        prompt = render(tokenizer, turns[:index], generation_prompt=True)
        full = render(tokenizer, turns[:index + 1], generation_prompt=False)
        if not prompt.startswith(rendered) or not full.startswith(prompt):
            fix = "use data.train_on=last" if train_on == "all" else "use a chat template that renders prefixes"
            raise UserError(f"the chat template renders earlier turns differently once later turns follow; {fix}")
        # What the template writes after the end-of-turn token (ChatML's newline) is not
        # generated by the model: it starts the next untrained piece, or is dropped at the end.
        reply = _cut_after(full[len(prompt):], end_token)
        segments += [(prompt[len(rendered):], False), (reply, index == last or train_on == "all")]
        rendered = prompt + reply
    return segments
