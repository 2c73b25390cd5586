"""distill: turn a large, accurate teacher into a small, fast student, and prove it with measurements.

    >>> import distill
    >>> result = distill.distill(teacher, student, train_data, loss=distill.KD(temperature=4, alpha=0.9))
"""

from distill.api import Result, distill, train
from distill.config import RunConfig, Schedule, TrainConfig, load_config
from distill.errors import DistillError
from distill.losses import CE, KD
from distill.methods import Method

__all__ = ["CE", "KD", "DistillError", "Method", "Result", "RunConfig", "Schedule", "TrainConfig", "distill", "load_config", "train"]
__version__ = "0.1.0"
