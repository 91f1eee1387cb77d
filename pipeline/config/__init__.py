"""The typed schema: one module per config group of conf/ (model.py <-> conf/model/, ...),
the training config they compose into (train.py), each command's own keys (commands.py), and
validation (validate.py).

Only pydantic and omegaconf are imported here: a bad value is reported before torch,
Lightning or MLflow load, in well under two seconds.
"""
