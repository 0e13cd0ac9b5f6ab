"""The ``train`` stage: one model per lambda, loss R + lambda * 255^2 * MSE.

A run survives being killed: every ``checkpoint_every`` steps the whole
training state (model, both optimizers, learning-rate schedule, AMP scaler,
step, the random generators of Python, NumPy, torch, CUDA and the crop
sampler) is written atomically to a state file, and a rerun with the same
settings resumes from it; on the CPU the resumed run ends with exactly the
weights of an uninterrupted one. Several GPUs or machines are used through
PyTorch DDP when the stage is launched by ``torchrun``.

- ``stage.py``: what ``stages/train.py`` runs (``run_train_stage``): data in,
  every process trains, the first writes the outputs;
- ``loop.py``: ``train_model``, in one screen, and the parts it calls;
- ``state.py``: what a run is between two steps, its digest, the state file;
- ``distributed.py``: the process group, the collectives, DDP's wrapper;
- ``mlflow_run.py``: the stage's MLflow run.
"""

from .loop import AMP_DTYPES, check_settings, split_parameters, train_model
from .stage import run_train_stage
from .state import training_digest

__all__ = ["AMP_DTYPES", "check_settings", "run_train_stage", "split_parameters", "train_model", "training_digest"]
