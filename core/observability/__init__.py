"""Metrics, usage statistics and logging set-up."""
