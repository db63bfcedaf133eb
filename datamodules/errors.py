"""The one exception type for bad input data, shared by every reader.

It lives beside the data modules (which never import the platform); the platform catches it and reports it
as a one-line user error.
"""


class DataError(ValueError):
    """Input data that cannot be used; the message names the file and the record or key at fault."""

    def __init__(self, source: object, problem: str) -> None:
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its type name when the message is empty), for a one-line
    error; cut to `limit` characters when given."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]
