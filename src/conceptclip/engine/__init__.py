"""Run a method: fit (closed form or gradient loop), evaluate once on test, checkpoints, results folder."""

from conceptclip.engine.config import TrainConfig
from conceptclip.engine.evaluate import classification_metrics, predict
from conceptclip.engine.run import prepare_run_dir, run_experiment
from conceptclip.engine.trainer import FitResult, fit

__all__ = ["TrainConfig", "classification_metrics", "predict", "prepare_run_dir", "run_experiment", "FitResult", "fit"]
