"""One run's training: data, models, the loss where the tricks meet, the loop, checkpoints."""
from bench.engine.evaluate import evaluate, logit_gaps
from bench.engine.loop import train, train_epoch
from bench.engine.loss import training_loss
from bench.engine.step import Step
from bench.engine.training import Training, setup

__all__ = ["Step", "Training", "evaluate", "logit_gaps", "setup", "train", "train_epoch", "training_loss"]
