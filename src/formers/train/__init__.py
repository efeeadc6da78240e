"""Training: config, task interface, trainer loop, checkpoints, distributed."""

from formers.train.config import TrainConfig
from formers.train.task import Task

__all__ = ["TrainConfig", "Task", "Trainer"]


def __getattr__(name: str):
    # the trainer pulls in rich / matplotlib / yaml lazily: `import formers.train` stays light
    if name == "Trainer":
        from formers.train.trainer import Trainer

        return Trainer
    raise AttributeError(f"module 'formers.train' has no attribute {name!r}")
