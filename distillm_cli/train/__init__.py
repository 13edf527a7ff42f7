"""Training: the DeepSpeed engine and shared loop (engine.py), DistiLLM's off-policy batch
sources and replay buffer (offpolicy.py), DistiLLM-2's response pairs and curricula
(contrastive.py). The losses themselves are distillm_cli.losses."""
