"""A declarative experiment pipeline for fine-tuning GPT-style language models."""
