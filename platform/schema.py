"""The MLflow run schema: every tag and summary-metric name plexlab writes, in one place.

Runs are read back by the CLI (`plexlab runs`, `plexlab sweep --status`), by resumed sweeps (which find their
trials' runs by tag) and by people in the dashboard, so the names are a contract: change them here only.
"""

from __future__ import annotations

from typing import Literal

from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

# MLflow's own tags that plexlab sets.
PARENT_RUN_ID = MLFLOW_PARENT_RUN_ID
RUN_NAME = MLFLOW_RUN_NAME
GIT_COMMIT = MLFLOW_GIT_COMMIT
# The experiment tag MLflow 3's dashboard reads to pick its view (3.17's server js: `mlflow.experimentKind`);
# without it the dashboard opens plexlab's experiments in the GenAI traces view.
EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"  # the value for its model-training view

# What a run is and what it trained.
KIND = "plexlab.kind"
MODEL = "plexlab.model"
DATA = "plexlab.data"
CONFIG_HASH = "plexlab.config_hash"
CONFIG_FILE = "plexlab.config_file"
CHECKPOINT = "plexlab.checkpoint"  # the checkpoint a test run evaluated

# Where and how it ran.
HOST = "plexlab.host"
WORLD_SIZE = "plexlab.world_size"
RAY_NODE = "plexlab.ray_node"
RESUMED_FROM = "plexlab.resumed_from"
TORCH_VERSION = "plexlab.torch_version"
CUDA_VERSION = "plexlab.cuda_version"  # `none` for a CPU build of torch
GPU_MODEL = "plexlab.gpu"  # the GPUs' names, or `none`

# How it ended: a scheduler's stop (FINISHED) or a failure's reason (FAILED / KILLED).
STOPPED = "plexlab.stopped"
ERROR = "plexlab.error"

# Sweeps: the parent run and its trials' child runs.
SWEEP = "plexlab.sweep"
SWEEP_PATH = "plexlab.sweep_path"
BEST_TRIAL = "plexlab.best_trial"
TRIAL_ID = "plexlab.trial_id"
TRIAL_NAME = "plexlab.trial_name"
REPEAT = "plexlab.repeat"  # on a repeat's nested run: `data.split=1`, the key and value it trained with
TIME_BUDGET = "plexlab.time_budget"  # on the parent: the budget, and whether it ran out
START_FROM = "plexlab.start_from"  # on the parent: the sweep whose best configs it tried first
EXTENDED = "plexlab.extended"  # on the parent: the Tune folders of the trials --extend added

# Launches: the job (`plexlab submit`, a notebook handle) a sweep's parent run or a fit's run belongs to, and
# on a trial run, that a stop of its sweep cut it short (it stays as history once --resume finished it).
JOB = "plexlab.job"
INTERRUPTED = "plexlab.interrupted"

Kind = Literal["fit", "test", "sweep", "trial", "repeat"]
FIT: Kind = "fit"
TEST: Kind = "test"
SWEEP_KIND: Kind = "sweep"
TRIAL: Kind = "trial"
REPEAT_KIND: Kind = "repeat"

# MLflow's system metrics monitor names its metrics `system/<name>` (system/cpu_utilization_percentage, ...).
SYSTEM_METRICS_PREFIX = "system/"

# Summary metrics of a run.
STOPPED_EPOCH = "stopped_epoch"  # the epoch early stopping ended a fit at
TRIALS = "trials"
TRIALS_FAILED = "trials_failed"
REPEATS = "repeats"  # on a trial run: how many repeats its mean and std are over
EPOCH = "epoch"  # Lightning logs it beside every metric, at the same step


def best(metric: str) -> str:
    """The summary metric with the best value of `metric` of a run's epochs: `val/acc` -> `val/acc_best`."""
    return f"{metric}_best"


def mean(metric: str) -> str:
    """A trial's mean over its repeats of their best `metric`: `val/acc` -> `val/acc_mean`."""
    return f"{metric}_mean"


def std(metric: str) -> str:
    """The standard deviation (ddof 1) that goes with `mean`: `val/acc` -> `val/acc_std`."""
    return f"{metric}_std"
