"""python -m pipeline.evaluate's own logic: the model over a split in plain torch (split.py,
metrics.py), an instruct model's answers (answers.py) and their judge (judge.py), stopping on
a signal with what is done kept (interrupt.py), and the command's story (command.py)."""
