"""The `accelc` command: one module per command in accelc/cli/ (add_arguments, run), shared argparse
types and printing in cli/common.py. Here: the parser, logging on stderr for the command's duration,
and turning what a command raises into an exit code.

Exit codes: 0 ok, 1 verification failed, 2 user error, 3 internal error (a bug), 141 the reader of
our output went away (`accelc schema | head`), as a shell reports for git and coreutils.
"""
from __future__ import annotations

import argparse
import os
import platform
import select
import sys
import traceback
from importlib import metadata

from accelc.cli import (bench, build, common, doctor, inspect, profile, schema, serve, targets, tune, validate,
                        verify)
from accelc.errors import EXIT_INTERNAL_ERROR, EXIT_USER_ERROR, AccelcError

EXIT_BROKEN_PIPE = 128 + 13  # what a shell shows for a process killed by SIGPIPE (git, cat, ...)
COMMANDS = (build, tune, validate, schema, targets, doctor, verify, bench, profile, serve, inspect)  # --help order


class _Versions(argparse.Action):
    """--version, from package metadata: importing torch or TVM to ask would take seconds, and fail
    where they are missing."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the versions of accelc, Python, torch and TVM, and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print("\n".join(f"{name} {version}" for name, version in versions().items()))
        parser.exit()


def versions() -> dict[str, str]:
    from accelc import __version__
    return {"accelc": __version__, "python": platform.python_version(), "torch": _installed("torch"),
            "tvm": _installed("apache-tvm", "tvm")}  # a source build of TVM installs as "tvm"


def _installed(*distributions: str) -> str:
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="accelc", description="Declarative model compiler: recipe -> verified "
                                  "TVM artifact.", epilog="exit codes: 0 ok, 1 verification failed, 2 user error, "
                                  "3 internal error")
    top.add_argument("--version", action=_Versions)
    common.add_verbosity(top, default=0)
    sub = top.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        common.add_verbosity(command.add_arguments(sub), default=argparse.SUPPRESS)
    return top


def main(argv: list[str] | None = None) -> int:
    code = _run(argv)
    try:
        sys.stdout.flush()  # a reader gone away shows here, not as the interpreter's exit-time complaint
    except BrokenPipeError:
        return _silence_stdout()
    return code


def _run(argv: list[str] | None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage (error: 2) or --help (0)
        return exc.code if isinstance(exc.code, int) else EXIT_USER_ERROR
    try:
        with common.console(args.verbosity):
            return args.run(args)
    except AccelcError as exc:
        print(exc.format(), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as exc:  # a bug: show everything
        if isinstance(exc, BrokenPipeError) and _stdout_gone():  # `accelc schema | head`: not a bug
            return _silence_stdout()
        traceback.print_exc()
        print("internal error: this is a bug in accelc; please report it with the traceback above",
              file=sys.stderr)
        return EXIT_INTERNAL_ERROR


def _stdout_gone() -> bool:
    """Is stdout a pipe or socket whose reader has gone? Then the write end polls as an error. (A
    broken pipe elsewhere, an RPC socket say, is still a bug to report.)"""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False  # not a real stream (tests capture it): the broken pipe was something else
    if not hasattr(select, "poll"):
        return True  # Windows: no poll on pipes; stdout is still the likeliest pipe to break
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _silence_stdout() -> int:
    """Exit quietly as git does; stdout now goes to /dev/null, so that the interpreter's own flush at
    exit does not fail on what is still buffered."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, sys.stdout.fileno())
    os.close(null)
    return EXIT_BROKEN_PIPE


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
