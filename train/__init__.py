"""The bundled COSMO-style pretraining runner (cosmo-data train).

Entry points: launch.run_cli (the command line, --nproc N through torchrun's launcher), launch.train (one
process or one torchrun rank) and config.TrainError (bad input, one line). This package imports neither
torch nor transformers until training starts.
"""

from cosmo_data.train.config import TrainError
from cosmo_data.train.launch import run_cli, train

__all__ = ["TrainError", "run_cli", "train"]
