"""The served backend (generation.backend=openai): answers from an OpenAI-compatible server.

Black-box distillation: `generate-student generate=teacher generation.backend=openai
generation.url=http://HOST:PORT/v1` takes the teacher's answers from any server with the
completions endpoint (`vllm serve`, SGLang, a hosted API); no teacher weights are loaded
here, only its tokenizer (model.teacher / teacher_dir), which turns prompt ids into the
text sent and the answers back into ids.

One request per prompt, `generation.concurrency` in flight (a thread pool); a request that
fails with a connection error, a timeout, 429 or a 5xx is tried again after 1, 2, 4 ... s
(at most `generation.retries` tries), any other HTTP error ends the run with the server's
message. The length limit is the hf backend's (max_new_tokens, or the room data.max_length
leaves after the call's longest prompt); an answer the server ended itself
(finish_reason "stop") gets the end token it stopped at (vLLM's `stop_reason` when it names
one of the model's end tokens, else the first of them), so `finished` and the `truncated`
mark mean what they mean for the other backends. Each request carries a seed when sampling
(seed of the call and the prompt's place). Resuming is generate-student's: it skips prompts
already in generations.jsonl.

Standard completions fields only, plus `top_k` when it is set (vLLM and SGLang accept it).
"""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from ..errors import UserError
from .stops import stop_token_ids

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class ServedGenerator:
    """`generate` by requests to an OpenAI-compatible completions endpoint."""

    def __init__(self, model, gen_cfg, tokenizer, *, max_length: int):
        if not gen_cfg.url:
            raise UserError("generation.backend=openai needs the server's address: generation.url=http://HOST:PORT/v1")
        self.gen_cfg, self.tokenizer, self.max_length = gen_cfg, tokenizer, max_length
        self.url = gen_cfg.url.rstrip("/")
        self.stop_ids = stop_token_ids(tokenizer, model)
        self._model_name = gen_cfg.served_model or None

    # -- the length limit and the request, as the other backends --------------------------------
    def new_tokens(self, prompts: list[list[int]]) -> int:
        """generation.max_new_tokens, or (0) the room the longest prompt leaves in max_length."""
        room = max(1, self.max_length - max(len(p) for p in prompts))
        return min(self.gen_cfg.max_new_tokens, room) if self.gen_cfg.max_new_tokens else room

    def settings(self, prompts: list[list[int]]) -> dict:
        """The request body's sampling fields (the prompt and the seed are added per request)."""
        body = {"model": self.model_name(), "max_tokens": self.new_tokens(prompts), "n": 1}
        if self.gen_cfg.do_sample:
            body.update(temperature=float(self.gen_cfg.temperature), top_p=float(self.gen_cfg.top_p))
            if self.gen_cfg.top_k:
                body["top_k"] = int(self.gen_cfg.top_k)
        else:
            body.update(temperature=0.0, top_p=1.0)
        return body

    def finished(self, response: list[int]) -> bool:
        return bool(response) and response[-1] in self.stop_ids

    # -- HTTP ------------------------------------------------------------------------------------
    def _request(self, path: str, body: dict | None = None) -> dict:
        """One JSON request with retries on what a busy or starting server answers."""
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.gen_cfg.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = None if body is None else json.dumps(body).encode()
        tries = max(1, int(self.gen_cfg.retries))
        for attempt in range(tries):
            request = urllib.request.Request(self.url + path, data=data, headers=headers,
                                             method="GET" if body is None else "POST")
            try:
                with urllib.request.urlopen(request, timeout=self.gen_cfg.request_timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as error:
                message = error.read().decode(errors="replace")[:300]
                if error.code not in RETRY_STATUS:
                    raise UserError(f"the server at {self.url} refused {path}: HTTP {error.code} "
                                    f"{' '.join(message.split())}") from error
                problem = f"HTTP {error.code} {message}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                problem = str(getattr(error, "reason", error))
            if attempt + 1 < tries:
                time.sleep(min(2.0 ** attempt, 30.0))
        raise UserError(f"the server at {self.url} did not answer {path} after {tries} tries ({problem}); "
                        "check generation.url and that the server is up")

    def model_name(self) -> str:
        """generation.served_model, or the first model the server lists."""
        if self._model_name is None:
            listed = self._request("/models").get("data") or []
            if not listed:
                raise UserError(f"the server at {self.url} lists no model; set generation.served_model")
            self._model_name = listed[0]["id"]
        return self._model_name

    def _answer(self, prompt: list[int], body: dict, seed: int) -> list[int]:
        text = self.tokenizer.decode(prompt, skip_special_tokens=False)
        request = {**body, "prompt": text}
        if self.gen_cfg.do_sample:
            request["seed"] = seed
        choice = self._request("/completions", request)["choices"][0]
        response = self.tokenizer(choice.get("text") or "", add_special_tokens=False)["input_ids"]
        response = response[: body["max_tokens"]]
        if choice.get("finish_reason") == "stop":  # the model ended it: keep the end token, as hf does
            reason = choice.get("stop_reason")
            response.append(reason if reason in self.stop_ids else self.stop_ids[0])
        return response

    def generate(self, prompts: list[list[int]], *, seed: int, batch_size: int | None = None,
                 on_batch=None) -> list[list[int]]:
        if not prompts:
            return []
        body = self.settings(prompts)
        size = batch_size or self.gen_cfg.batch_size
        responses: list[list[int]] = []
        with ThreadPoolExecutor(max_workers=max(1, int(self.gen_cfg.concurrency))) as pool:
            for start in range(0, len(prompts), size):
                chunk = prompts[start:start + size]
                done = list(pool.map(lambda item: self._answer(item[1], body, seed * 1_000_003 + item[0]),
                                     enumerate(chunk, start)))
                responses += done
                if on_batch is not None:
                    on_batch(len(chunk), sum(len(r) for r in done))
        return responses
