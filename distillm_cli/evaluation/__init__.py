"""Scores and comparisons: ROUGE-L and exact match as the papers compute them (metrics.py),
and `distillm report`, the table and plots over finished runs or a sweep (report.py)."""
