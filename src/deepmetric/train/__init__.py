"""Training: the trainer loop, optimizers and schedules, distributed helpers and the ``train(config)``
pipeline. Importing this package registers the ``optimizer`` and ``scheduler`` components only."""

from deepmetric.train.schedules import AdamWOptimizer, ConstantSchedule, SGDOptimizer, WarmupCosineSchedule

__all__ = ["AdamWOptimizer", "ConstantSchedule", "SGDOptimizer", "WarmupCosineSchedule", "train"]


def train(config, *, resume=False, overwrite=False, step_callbacks=None):
    """``deepmetric.train.pipelines.train``, imported on first use so that this package stays light."""
    from deepmetric.train.pipelines import train as _train

    return _train(config, resume=resume, overwrite=overwrite, step_callbacks=step_callbacks)
