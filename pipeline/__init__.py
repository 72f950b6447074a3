"""Orchestration of the headstart workflows: input path, head, fine-tuning, reports and the CLI."""

__version__ = "0.1.0"
