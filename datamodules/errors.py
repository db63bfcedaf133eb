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
