"""Error types. Every error a user can cause is a ``ValueError`` subclass whose message
names the problem and the fix; the CLI turns them into exit code 2 and one line on stderr."""

import sys


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
    wanted. A reload (``importlib.reload``, IPython's ``%autoreload`` in a notebook) makes a
    second class of the same module and name, and the message says which side is stale, where
    "fit takes a TrainConfig, got TrainConfig" named no cause: an object made before the reload
    is built again; one made after it, from the reloaded module, is refused by library code
    still holding the class it imported (building it again fails the same way)."""
    name, kind = type(obj).__name__, type(obj)
    for t in expected:
        if kind is t or (kind.__module__, kind.__qualname__) != (t.__module__, t.__qualname__):
            continue
        current = sys.modules.get(kind.__module__)
        for part in kind.__qualname__.split("."):
            current = getattr(current, part, None)
        if current is kind:
            return (f"{name} of a reloaded module (made after {kind.__module__} was reloaded; "
                    "the library still checks the class it imported first: restart the kernel)")
        return (f"{name} of a reloaded module (made before {kind.__module__} was reloaded: "
                "build it again, or restart the kernel)")
    return name


def shell_quote(path) -> str:
    """``path`` as a shell word, for the commands that messages suggest: a directory with a
    space or a ``~`` in its name pastes back as itself."""
    import shlex

    return shlex.quote(str(path))
