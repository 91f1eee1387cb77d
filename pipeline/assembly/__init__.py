"""A model with what it needs to be used again (trained.py): built new from a config
(model.py), or restored from any layout on disk (restore.py)."""
