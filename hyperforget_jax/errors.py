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


def kind_of(obj, *expected: type) -> str:
    """``type(obj).__name__``, for the message refusing ``obj`` where an ``expected`` type was
    wanted. An object made before the library module defining it was reloaded
    (``importlib.reload``, IPython's ``%autoreload`` in a notebook) is of another class of the
    same module and name: the message says so, where "fit takes a TrainConfig, got TrainConfig"
    named no cause."""
    name, kind = type(obj).__name__, type(obj)
    if any(kind is not t and (kind.__module__, kind.__qualname__) == (t.__module__, t.__qualname__)
           for t in expected):
        return (f"{name} of a reloaded module (made before {type(obj).__module__} was reloaded: "
                "build it again, or restart the kernel)")
    return name


def shell_quote(path) -> str:
    """``path`` as a shell word, for the commands that messages suggest: a directory with a
    space or a ``~`` in its name pastes back as itself."""
    import shlex

    return shlex.quote(str(path))
