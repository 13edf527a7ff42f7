"""check: the preflight of every stage, shown (`distillm check model=... data=...`).

Recipe: load both tokenizers and model configs (no weights) -> compare vocabulary,
special tokens and chat template -> embedding rows and context length against
data.max_length -> render the first training record with its loss mask -> a table,
the example, and exit 2 with one line per problem if there is any. Writes nothing.
"""
from __future__ import annotations

from ..checks import run_checks
from ..errors import UserError
from ..ui import is_main_process, print_table


def run(cfg) -> dict:
    findings = run_checks(cfg)
    print_table(f"distillm check: model={cfg.model.name} data={cfg.data.name}", ["check", "result", "status"],
                findings.rows)
    if findings.example and is_main_process():
        print("example (the loss counts the tokens between ⟦ and ⟧):")
        print(findings.example)
    if findings.problems:
        raise UserError(*findings.problems)
    return {"stage": "check", "checks": findings.rows}
