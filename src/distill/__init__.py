"""distill: turn a large, accurate teacher into a small, fast student, and prove it with measurements.

    >>> import distill
    >>> result = distill.distill(teacher, student, train_data, loss=distill.KD(temperature=4, ratio=0.9))
"""

from distill.api import Result, RunResult, compare, distill, lm, run, textkd, train
from distill.core.config import Schedule
from distill.core.errors import DistillError
from distill.losses.methods import CE, KD, Method
from distill.recipes.classify.config import RunConfig, load_config
from distill.training.config import TrainConfig

__all__ = ["CE", "KD", "DistillError", "Method", "Result", "RunConfig", "RunResult", "Schedule", "TrainConfig",
           "compare", "distill", "lm", "load_config", "run", "textkd", "train"]
__version__ = "0.1.0"
