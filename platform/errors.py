"""The platform's exception types: user mistakes get one line, never a traceback (unless --debug)."""

from plexlab.datamodules.errors import DataError


class PlexlabError(Exception):
    """Base class of every error the platform reports as a user mistake."""


class ConfigError(PlexlabError):
    """An experiment file or override that does not validate; the message names the file and key."""

    def __init__(self, source: object, key: str, problem: str) -> None:
        self.source = str(source)
        self.key = key
        where = f"{self.source}: {key}" if key else self.source
        super().__init__(f"{where}: {problem}")


class TrackingError(PlexlabError):
    """The MLflow tracking server or store cannot be used."""


class RegistryError(PlexlabError):
    """A model or data module name that is not registered, or whose code cannot be imported."""


#: Everything the CLI turns into a one-line message and exit status 2.
USER_ERRORS: tuple[type[Exception], ...] = (PlexlabError, DataError)
