"""A sweep file's search as Ray Tune objects: the space, the trial scheduler and the search algorithm."""

from __future__ import annotations

from typing import Any

from plexlab import sweep_config
from plexlab.config import ExperimentConfig, set_dotted
from plexlab.errors import ConfigError
from ray import tune


def search_space(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """{"model.lr": {"loguniform": [a, b]}} -> {"model": {"lr": tune.loguniform(a, b)}}, nested for Tune."""
    out: dict[str, Any] = {}
    for key, spec in space.items():
        set_dotted(out, key, _distribution(*next(iter(spec.items()))))
    return out


def _distribution(kind: str, args: list[Any]) -> Any:
    if kind == "choice":
        return tune.choice(args)
    if kind == "grid":
        return tune.grid_search(args)
    if kind == "randint":
        return tune.randint(int(args[0]), int(args[1]))
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "quniform": tune.quniform}[kind](
        *(float(a) for a in args)
    )


def grid_space(space: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Grid search: every choice becomes a grid axis."""
    return {k: {"grid": next(iter(v.values()))} for k, v in space.items()}


def trial_space(cfg: ExperimentConfig) -> dict[str, dict[str, Any]]:
    """The space as the trials sample it (grid search turns every choice into a grid axis)."""
    assert cfg.sweep is not None
    return grid_space(cfg.sweep.space) if cfg.sweep.search.name == "grid" else cfg.sweep.space


def scheduler(cfg: ExperimentConfig) -> Any:
    """The trial scheduler; time is counted in epochs (Tune's training_iteration)."""
    from ray.tune import schedulers as s

    assert cfg.sweep is not None
    sched = cfg.sweep.scheduler
    max_t = sweep_config.max_t(sched, cfg.trainer)
    common = {"time_attr": "training_iteration"}
    if sched.name == "asha":
        return s.ASHAScheduler(
            **common, max_t=max_t, grace_period=sched.grace_period, reduction_factor=sched.reduction_factor
        )
    if sched.name == "hyperband":
        return s.HyperBandScheduler(**common, max_t=max_t, reduction_factor=sched.reduction_factor)
    if sched.name == "median":
        return s.MedianStoppingRule(**common, grace_period=sched.grace_period, min_samples_required=2)
    if sched.name == "pbt":
        keys = sched.mutations or list(cfg.sweep.space)
        mutations = search_space({k: cfg.sweep.space[k] for k in keys})
        return s.PopulationBasedTraining(
            **common, perturbation_interval=sched.perturbation_interval, hyperparam_mutations=mutations
        )
    return s.FIFOScheduler()


def search_algorithm(cfg: ExperimentConfig, metric: str, mode: str, **warm_start: Any) -> Any:
    """Random and grid use Tune's own variant generator (None); optuna and hyperopt need their extras.
    `warm_start`: the searcher's `points_to_evaluate` (and Optuna's `evaluated_rewards`)."""
    assert cfg.sweep is not None
    name = cfg.sweep.search.name
    try:
        if name == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            algo = OptunaSearch(metric=metric, mode=mode, seed=cfg.seed, **warm_start)
        elif name == "hyperopt":
            from ray.tune.search.hyperopt import HyperOptSearch

            warm_start.pop("evaluated_rewards", None)  # Ray's HyperOpt wrapper takes no scores
            algo = HyperOptSearch(metric=metric, mode=mode, random_state_seed=cfg.seed, **warm_start)
        else:
            return None
    except (ImportError, AssertionError) as exc:
        raise ConfigError(
            cfg.source, "sweep.search.name", f"{name} is not installed ({exc}); pip install 'plexlab[search]'"
        ) from None
    if cfg.sweep.max_concurrent:
        from ray.tune.search import ConcurrencyLimiter

        algo = ConcurrencyLimiter(algo, max_concurrent=cfg.sweep.max_concurrent)
    return algo
