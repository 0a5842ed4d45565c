"""The ``hyperforget`` program's Ctrl-C handlers, in a module that imports nothing heavy: the
package installs the first before it imports JAX when it is imported by the program itself (a
Ctrl-C in the seconds of JAX's import was dropped, and the run went on to exit 0)."""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading


def interrupt(signum: int, frame) -> None:
    """The program's Ctrl-C: KeyboardInterrupt, unless it lands inside a garbage-collection
    callback (JAX registers one), where Python prints it as "Exception ignored in
    _xla_gc_callback" and drops it: the run went on to exit 0 (3 of 25 interrupts on a loaded
    machine). There it is delivered again 20 ms later, outside the callback."""
    codes = {getattr(cb, "__code__", None) for cb in gc.callbacks}
    if frame is not None and frame.f_code in codes:
        threading.Timer(0.02, os.kill, (os.getpid(), signal.SIGINT)).start()
        return
    raise KeyboardInterrupt


def install() -> None:
    """:func:`interrupt` as the SIGINT handler (the main thread only: signals go there)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, interrupt)


def is_program() -> bool:
    """Whether this process is the ``hyperforget`` program (its console script, or
    ``python -m hyperforget_jax.cli``), not a user's Python importing the library."""
    # The console script itself (pip's stub imports hyperforget_jax.cli): a user's script named
    # hyperforget.py, hyperforget or a project directory hyperforget/ is not the program (its
    # Ctrl-C ended it with os._exit, no KeyboardInterrupt, no finally).
    orig = getattr(sys, "orig_argv", [])
    return _is_console_script(sys.argv[0] if sys.argv else "") or (
        "-m" in orig and orig[orig.index("-m") + 1:][:1] == ["hyperforget_jax.cli"])


def _at_startup(signum: int, frame) -> None:
    # Nothing is started or written while the program imports its modules: it ends here, with
    # its one line (a KeyboardInterrupt there was a traceback of the import machinery).
    print("hyperforget: interrupted while starting; nothing was run", file=sys.stderr)
    sys.stderr.flush()
    os._exit(130)


def _is_console_script(path: str) -> bool:
    name = os.path.basename(path)
    if name == "hyperforget.exe":       # pip's Windows launcher (a binary)
        return True
    if name not in ("hyperforget", "hyperforget-script.py"):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:                     # a directory run as `python hyperforget`, or unreadable
        return False
    # pip's stub, not a user's wrapper of that name (which may call main([...]) and would keep
    # the startup handler: Ctrl-C mid-run ended it with os._exit, its `finally` skipped).
    return b"from hyperforget_jax.cli import main" in head and b"sys.exit(main())" in head


def install_if_program() -> None:
    """While the program imports JAX and the commands: Ctrl-C ends it at once with one line
    (``hyperforget_jax.cli`` installs :func:`interrupt` once it runs a command)."""
    if is_program() and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _at_startup)


def uninstall_startup() -> None:
    """Python's own Ctrl-C (KeyboardInterrupt) in place of the startup handler, when the
    library's ``main([...])`` is called from Python with the startup handler still installed
    (it ends the process with ``os._exit``: no ``finally``, nothing saved)."""
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is _at_startup):
        signal.signal(signal.SIGINT, signal.default_int_handler)
