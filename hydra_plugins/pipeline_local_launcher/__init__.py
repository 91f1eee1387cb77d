"""hydra/launcher=local: Hydra's joblib launcher, trials side by side on this machine, with no
more worker processes than trials. Hydra finds it through the hydra_plugins namespace package;
conf/hydra/launcher/local.yaml selects it."""

from hydra_plugins.pipeline_local_launcher.local_launcher import LocalLauncher

__all__ = ["LocalLauncher"]
