"""``python -m d2lgru`` and the ``d2lgru`` command.

The command's entry point, and the only module that changes process state on import: until
:func:`d2lgru.cli.main` takes over, once the command's imports are made (d2lgru's modules,
NumPy, the backend's framework: ``cli._preload``), a Ctrl-C during start-up ends the process
with one line and status 130 instead of a traceback from inside an import. Only the
interpreter's own start-up, before this file runs, is outside its reach. A command started
with Ctrl-C ignored (``nohup``, a script's ``&``) keeps ignoring it, and still takes SIGTERM
over.
"""

import os
import signal
import sys


def _interrupted_at_start_up(signum, frame):
    os.write(2, b"d2lgru: interrupted\n")
    os._exit(130)


if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted_at_start_up)

from d2lgru import cli  # noqa: E402


def main() -> int:
    """The ``d2lgru`` command: :func:`d2lgru.cli.main` with the signals taken over."""
    return cli.main(command_line=True)


if __name__ == "__main__":
    sys.exit(main())
