"""The job commands of `plexlab`: `submit`, `jobs`, `logs`, `stop` (a sweep or fit on a Ray cluster, run
through its job server). `cli.parser()` registers them; like cli.py, this reaches the package only through
`plexlab.api`, imported on first use so that `plexlab --help` stays fast."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from plexlab.errors import ConfigError
from rich.console import Console
from rich.table import Table

console = Console()


def _api() -> Any:
    from plexlab import api

    return api


def _token(args: argparse.Namespace) -> str | None:
    """The token from --token-file (a file, not the command line, which other users can read in `ps`)."""
    if not args.token_file:
        return None
    try:
        return Path(args.token_file).read_text().strip()
    except OSError as exc:
        raise ConfigError(args.token_file, "--token-file", f"cannot read it: {exc.strerror}") from None


def cmd_submit(args: argparse.Namespace) -> None:
    options = {"address": args.address, "token": _token(args), "resume": args.resume, "storage": args.storage}
    job = _api().submit(args.config, args.set, **options)
    console.print(f"submitted {job.job_id}: plexlab {job.command} {args.config} ({job.experiment})")
    if args.follow:
        _write(_api().job_logs(job.job_id, args.address, _token(args), follow=True))
        console.print(f"{job.job_id}: {job.status()}")
    else:
        console.print(f"follow it with: plexlab logs {job.job_id} --follow")


def cmd_jobs(args: argparse.Namespace) -> None:
    rows = _api().jobs(args.address, _token(args))
    if not rows:
        console.print("no plexlab jobs on this cluster")
        return
    table = Table(title=f"{len(rows)} plexlab jobs, newest first")
    for column in rows[0]:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)


def _write(chunks: Any) -> None:
    for chunk in chunks:
        sys.stdout.write(chunk)
        sys.stdout.flush()


def cmd_logs(args: argparse.Namespace) -> None:
    _write(_api().job_logs(args.job, args.address, _token(args), follow=args.follow))


def cmd_stop(args: argparse.Namespace) -> None:
    console.print(f"{args.job}: {_api().stop_job(args.job, args.address, _token(args))}")


def register(sub: Any, common: argparse.ArgumentParser, sets: argparse.ArgumentParser) -> None:
    """Add the job commands to `plexlab`'s subcommands."""
    cluster = argparse.ArgumentParser(add_help=False)
    cluster.add_argument(
        "--address", help="the head's job server, http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS)"
    )
    cluster.add_argument(
        "--token-file",
        help="a file holding the cluster's token (default: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray's)",
    )

    p = sub.add_parser(
        "submit", parents=[common, sets, cluster], help="run a sweep (or fit) file on a Ray cluster as a job"
    )
    p.add_argument("config")
    p.add_argument("--resume", action="store_true", help="continue a stopped sweep (a fit: its last run)")
    p.add_argument("--storage", help="the sweep's results on the cluster (default: ~/plexlab_sweeps there)")
    p.add_argument("--follow", action="store_true", help="print the job's output until it ends")
    p.set_defaults(run=cmd_submit)

    p = sub.add_parser("jobs", parents=[common, cluster], help="the cluster's plexlab jobs, best so far")
    p.set_defaults(run=cmd_jobs)

    p = sub.add_parser("logs", parents=[common, cluster], help="a job's output")
    p.add_argument("job")
    p.add_argument("--follow", action="store_true", help="keep printing until the job ends")
    p.set_defaults(run=cmd_logs)

    p = sub.add_parser(
        "stop", parents=[common, cluster], help="stop a job: its runs end, `submit --resume` continues it"
    )
    p.add_argument("job")
    p.set_defaults(run=cmd_stop)
