"""Error types. Every error a user can cause is a ``ValueError`` subclass whose message
names the problem and the fix; the CLI turns them into exit code 2 and one line on stderr."""


class HyperforgetError(ValueError):
    """Base class of every user-facing error in hyperforget_jax."""


class DataError(HyperforgetError):
    """A dataset is missing, unprepared, malformed (wrong shape, NaN values) or empty."""


class ForgetRequestError(HyperforgetError):
    """A forget request is invalid: unknown class, empty, whole training set, bad indices."""


class ArchitectureError(HyperforgetError):
    """Parameters (pytree or flat vector) do not match the architecture they are used with."""


class CheckpointError(HyperforgetError):
    """A checkpoint or corpus is missing, corrupt, truncated or from another run/architecture."""


class NonFiniteError(HyperforgetError):
    """A loss, gradient or parameter became NaN/inf; training stops instead of continuing."""


class ConfigError(HyperforgetError):
    """A configuration value is out of range or inconsistent."""


class RunDirError(HyperforgetError):
    """A run directory holds a different run, is being written by another process, or is the
    directory a command reads from (writing there would destroy it)."""


def shell_quote(path) -> str:
    """``path`` as a shell word, for the commands that messages suggest: a directory with a
    space or a ``~`` in its name pastes back as itself."""
    import shlex

    return shlex.quote(str(path))
