"""`plexlab`: the command line. Each command is a thin call into plexlab.api.

A user mistake (config, data, paths, tracking server) prints one line and exits with status 2; `--debug`
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from plexlab.errors import USER_ERRORS
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def _api() -> Any:
    """plexlab.api, imported on first use: it loads torch and Lightning, which `plexlab --help` need not."""
    from plexlab import api

    return api


def _table(title: str, rows: list[dict[str, Any]], columns: list[str] | None = None) -> Table:
    """Rows of dicts as one rich table: every key that any row has is a column, numbers to 4 digits."""
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    return table


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):  # MLflow params come back as text
        try:
            value = float(value) if "." in value or "e" in value else value
        except ValueError:
            return value
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _metrics_table(title: str, metrics: dict[str, float]) -> Table:
    return _table(title, [{"metric": k, "value": v} for k, v in sorted(metrics.items())])


def cmd_fit(args: argparse.Namespace) -> None:
    result = _api().fit(args.config, args.set, resume=args.resume, allow_tracking_uri=args.allow_tracking_uri)
    console.print(_metrics_table(f"{result.config.name}: test on the best epoch", result.metrics))
    console.print(f"run {result.run_id}  ({result.tracking_uri})\nbest checkpoint {result.checkpoint}")


def cmd_check(args: argparse.Namespace) -> None:
    import yaml

    resolved = _api().check(args.config, args.set)
    print(yaml.safe_dump(resolved, sort_keys=False), end="")  # plain: the output is a YAML file


def cmd_test(args: argparse.Namespace) -> None:
    result = _api().test(args.config, args.ckpt, args.set, allow_tracking_uri=args.allow_tracking_uri)
    console.print(_metrics_table(f"{result.config.name}: {args.ckpt}", result.metrics))
    console.print(f"run {result.run_id}")


def cmd_embed(args: argparse.Namespace) -> None:
    console.print(f"wrote {_api().embed(args.config, args.ckpt, args.out, args.set)}")


def cmd_sweep(args: argparse.Namespace) -> None:
    if args.plots:
        parent, paths = _api().sweep_plots(args.config, args.set, allow_tracking_uri=args.allow_tracking_uri)
        console.print(f"parent run {parent}: " + ", ".join(paths))
        return
    if args.status:
        name, planned, rows = _api().sweep_status(
            args.config, args.set, allow_tracking_uri=args.allow_tracking_uri
        )
        columns = list(dict.fromkeys(k for row in rows for k in row if k not in ("run_id", "parent")))
        console.print(_table(f"sweep {name}: {len(rows)} of {planned} trials recorded", rows, columns))
        return
    result = _api().sweep(
        args.config,
        args.set,
        address=args.address,
        storage=args.storage,
        resume=args.resume,
        extend=args.extend,
        allow_tracking_uri=args.allow_tracking_uri,
        insecure_local_ray=args.insecure_local_ray,
        verbose=args.verbose,
    )
    scored = sorted(
        (r for r in result.trials if r[result.metric] is not None),
        key=lambda r: r[result.metric],
        reverse=result.mode == "max",
    )
    ordered = scored + [r for r in result.trials if r[result.metric] is None]
    table = _table(f"{len(result.trials)} trials; best {result.metric} = {result.best_metric:.4f}", ordered)
    table.caption = f"MLflow parent run {result.parent_run_id}; best checkpoint {result.best_checkpoint}"
    console.print(table)


def cmd_data_check(args: argparse.Namespace) -> None:
    summary = _api().check_data(args.path, args.data, args.set)
    flat = {k: v for k, v in summary.items() if not isinstance(v, dict)}
    console.print(_table(f"{args.data}: {args.path}", [{"": k, "value": v} for k, v in flat.items()]))
    for title, table in ((k, v) for k, v in summary.items() if isinstance(v, dict)):
        rows = [{"": k, "value": v} for k, v in table.items()] or [{"": "none", "value": ""}]
        console.print(_table(title, rows))


def cmd_list(args: argparse.Namespace) -> None:
    for title, entries in (("models", _api().models()), ("data modules", _api().datamodules())):
        console.print(_table(title, [{"name": n, "summary": s} for n, s in entries.items()]))


def cmd_runs(args: argparse.Namespace) -> None:
    rows = _api().runs(args.experiment, args.uri)[: args.limit]
    if not rows:
        console.print(f"{args.experiment}: no runs yet")
        return
    columns = list(dict.fromkeys(k for row in rows for k in row if k != "run_id"))
    console.print(_table(f"{args.experiment}: {len(rows)} runs, best first", rows, columns))


def cmd_ui(args: argparse.Namespace) -> None:
    uri = _api().tracking_uri(args.uri)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    command += ["--host", args.host, "--port", str(args.port)]
    url, named = f"http://{args.host}:{args.port}", args.experiment or args.config
    if named:
        url += f"/#/experiments/{_api().experiment_id(named, uri)}"
    # print, flushed: exec drops a buffer, and the URL must stay on one line to be clicked or parsed
    print(f"MLflow dashboard on {url} (store {uri}); Ctrl-C stops it", flush=True)
    os.execv(sys.executable, command)


def cmd_simulate(args: argparse.Namespace) -> None:
    console.print(f"wrote {_api().simulate(args.kind, args.out, args.set)}")


def parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's default must not undo `plexlab --debug fit ...`.
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    sets = argparse.ArgumentParser(add_help=False)
    sets.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key (repeatable)")
    tracks = argparse.ArgumentParser(add_help=False)
    tracks.add_argument(
        "--allow-tracking-uri",
        action="store_true",
        help="send runs (and your MLflow credentials) to the tracking server the file names, not only yours",
    )

    top = argparse.ArgumentParser(prog="plexlab", description=__doc__.splitlines()[0], parents=[common])
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "fit", parents=[common, sets, tracks], help="train, test on the best epoch, record in MLflow"
    )
    p.add_argument("config")
    p.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="continue a killed fit from its last checkpoint, in the same run; `last`: the newest unfinished",
    )
    p.set_defaults(run=cmd_fit)

    p = sub.add_parser(
        "check", parents=[common, sets], help="validate a file; print its resolved config (bases merged)"
    )
    p.add_argument("config")
    p.set_defaults(run=cmd_check)

    p = sub.add_parser("test", parents=[common, sets, tracks], help="evaluate a checkpoint on the test split")
    p.add_argument("config")
    p.add_argument("--ckpt", required=True)
    p.set_defaults(run=cmd_test)

    p = sub.add_parser("embed", parents=[common, sets], help="write every sample's embedding")
    p.add_argument("config")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", required=True, help=".npz (ids, embedding), or .h5ad for single-cell data")
    p.set_defaults(run=cmd_embed)

    p = sub.add_parser("sweep", parents=[common, sets, tracks], help="run or resume a Ray Tune sweep")
    p.add_argument("config")
    p.add_argument("--address", help="join a running Ray cluster (HOST:PORT or auto; default RAY_ADDRESS)")
    p.add_argument("--storage", help="results folder or s3:// URI (default: the file's sweep.storage)")
    p.add_argument("--resume", action="store_true", help="continue a sweep whose driver died")
    p.add_argument("--status", action="store_true", help="show the sweep's trials and exit")
    p.add_argument("--plots", action="store_true", help="build the recorded sweep's plots again and exit")
    p.add_argument("--verbose", action="store_true", help="Ray Tune's own tables, not plexlab's view")
    p.add_argument(
        "--extend",
        type=int,
        metavar="N",
        help="add N trials to a finished sweep, under its MLflow parent run",
    )
    p.add_argument(
        "--insecure-local-ray",
        action="store_true",
        help="start a local Ray even with RAY_AUTH_MODE=disabled (anyone reaching its ports can run code)",
    )
    p.set_defaults(run=cmd_sweep)

    p = sub.add_parser("data", parents=[common], help="check your data against a data module")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    q = data_sub.add_parser(
        "check", parents=[common, sets], help="read and validate data without training; print what was found"
    )
    q.add_argument("path", help="the file or folder the data module reads (its `path` setting)")
    q.add_argument("--data", required=True, help="the data module (see `plexlab list`)")
    q.set_defaults(run=cmd_data_check)

    p = sub.add_parser("list", parents=[common], help="registered models and data modules")
    p.set_defaults(run=cmd_list)

    p = sub.add_parser("runs", parents=[common], help="an experiment's runs, best first")
    p.add_argument("experiment")
    p.add_argument("--uri", help="tracking URI (default: MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(run=cmd_runs)

    p = sub.add_parser("ui", parents=[common], help="open the MLflow dashboard (bound to 127.0.0.1)")
    p.add_argument("--uri", help="tracking URI (default: MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("config", nargs="?", help="an experiment file: print its experiment's URL")
    p.add_argument("--experiment", metavar="NAME", help="print this experiment's URL")
    p.set_defaults(run=cmd_ui)

    p = sub.add_parser("simulate", parents=[common, sets], help="write a simulated data set")
    p.add_argument("kind", choices=["sparse-shift"], help="sparse-shift: perturbations for svae (.h5ad)")
    p.add_argument("out")
    p.set_defaults(run=cmd_simulate)

    from plexlab import cli_jobs  # submit, jobs, logs, stop: a Ray cluster's job server

    cli_jobs.register(sub, common, sets)
    return top


class _CurrentStderr(logging.StreamHandler):
    """Writes to sys.stderr as it is when a record is emitted: a notebook or a test may replace (and close)
    the stream that was there when logging was set up."""

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _configure_logging() -> None:
    """plexlab's INFO and everyone's warnings on stderr, once. Others' INFO stays theirs: Lightning prints its
    own, and a root handler passing it on would print every line twice."""
    root = logging.getLogger()
    if any(h.get_name() == "plexlab-cli" for h in root.handlers):
        return
    handler = _CurrentStderr()
    handler.set_name("plexlab-cli")
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(lambda record: record.levelno >= logging.WARNING or record.name.startswith("plexlab"))
    root.addHandler(handler)
    logging.getLogger("plexlab").setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `plexlab` command; returns the exit status."""
    args = parser().parse_args(argv)
    _configure_logging()
    try:
        args.run(args)
    except USER_ERRORS as exc:
        if getattr(args, "debug", False):
            raise
        err_console.print(f"plexlab: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt as exc:
        why = f": {exc}" if str(exc) else ""  # a stopped sweep says how to resume it
        err_console.print(f"plexlab: interrupted{why}", markup=False, highlight=False)
        return 130
    except SystemExit as exc:
        # Lightning turns SIGTERM into this SystemExit, whose status would be 0
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if not isinstance(exc, SIGTERMException):
            raise
        err_console.print("plexlab: terminated (SIGTERM)")
        return 143
    return 0


if __name__ == "__main__":
    sys.exit(main())
