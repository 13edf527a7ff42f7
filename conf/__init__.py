# Makes conf/ the package distillm_cli.conf (pyproject.toml maps it there), where Hydra finds the config groups.
