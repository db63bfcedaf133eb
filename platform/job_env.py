"""Which launch a driver belongs to: the job id `plexlab submit` (or a notebook handle) gave it.

A launcher sets PLEXLAB_JOB_ID in the driver's environment; a job someone submitted with Ray's own
`ray job submit` is named by the submission id Ray hands its driver. The sweep's parent run carries the id as
a tag, so `plexlab jobs` and a handle's `best()` find the runs of a job in MLflow.
"""

from __future__ import annotations

import json
import os

from plexlab import schema

JOB_ID_VARIABLE = "PLEXLAB_JOB_ID"
# Ray's job supervisor hands its driver the job's config (runtime_env, metadata) in this variable.
RAY_JOB_CONFIG_VARIABLE = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def job_id() -> str | None:
    """This driver's job id, if a launcher or Ray's job server started it."""
    own = os.environ.get(JOB_ID_VARIABLE)
    if own:
        return own
    try:
        metadata = json.loads(os.environ.get(RAY_JOB_CONFIG_VARIABLE, "{}")).get("metadata") or {}
    except (ValueError, AttributeError):  # not ours to validate: a driver runs without a job id
        return None
    return metadata.get("job_submission_id") or None


def tags() -> dict[str, str]:
    """The job tag for a run this driver starts or continues (none outside a job)."""
    found = job_id()
    return {schema.JOB: found} if found else {}
