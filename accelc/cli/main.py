"""Command line: argument parsing and printing only; the library does the work.

Exit codes: 0 ok, 1 verification failed, 2 user error, 3 internal error (a bug), 141 the reader of
our output went away (`accelc schema | head`), as a shell reports for git and coreutils.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import select
import sys
import tempfile
import textwrap
import traceback
from importlib import metadata
from pathlib import Path

from accelc.errors import EXIT_INTERNAL_ERROR, EXIT_OK, EXIT_USER_ERROR, EXIT_VERIFY_FAILED, AccelcError, ArtifactError

EXIT_BROKEN_PIPE = 128 + 13  # what a shell shows for a process killed by SIGPIPE (git, cat, ...)
WIDTH = 100  # columns for tables meant to be read in a terminal


def _cmd_build(args) -> int:
    from accelc.compile import build
    result = build(args.recipe, target=args.target, output=args.output, log=_progress, use_cache=not args.no_cache)
    return EXIT_OK if result.report["status"] != "failed" else EXIT_VERIFY_FAILED


def _cmd_tune(args) -> int:
    if args.merge:
        from accelc.backends.tvm.tune import database as tune_db
        from accelc.errors import TuningError
        if not args.output:
            raise TuningError("--merge needs -o OUT, the database to merge into", code="E617")
        tune_db.merge([Path(p) for p in args.merge], Path(args.output), log=_progress)
        return EXIT_OK
    from accelc.compile import tune_recipe
    tune_recipe(args.recipe, target=args.target, resume=args.resume, log=_progress)
    return EXIT_OK


def _cmd_validate(args) -> int:
    from accelc.config import recipe as recipe_mod
    from accelc.config import targets
    results, code = [], EXIT_OK
    for path in args.recipes:
        try:
            loaded = recipe_mod.load(path)
            spec = targets.resolve(args.target or loaded.recipe.target, loaded.root,
                                   None if args.target else loaded.where("target"))
            targets.check_compatible(spec, loaded.recipe, loaded.where)
            results.append({"recipe": path, "ok": True, "errors": []})
        except AccelcError as exc:
            code = EXIT_USER_ERROR
            results.append({"recipe": path, "ok": False, "errors": [p.__dict__ for p in exc.problems]})
            if not args.json:
                print(exc.format(), file=sys.stderr)
            continue
        if not args.json:
            print(f"{path}: ok")
    if args.json:
        print(json.dumps(results, indent=2))
    return code


def _cmd_schema(args) -> int:
    from accelc.config.recipe import json_schema
    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


def _cmd_targets(args) -> int:
    from accelc.config import targets
    print("\n".join(_target_lines(list(targets.load_all(Path.cwd()).values()))))
    return EXIT_OK


def _target_lines(specs: list, width: int = WIDTH) -> list[str]:
    """A table of the short facts, each target's description and dtypes indented below its row:
    one row of everything was ~200 columns wide."""
    rows = [(t.name, t.device, "yes" if t.runs_here()[0] else "no") for t in specs]
    header = ("target", "device", "runs here")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    indent = sum(widths) + 2 * len(widths)  # where the aliases column starts
    aliases = [textwrap.wrap(", ".join(t.aliases), max(20, width - indent)) or ["-"] for t in specs]
    alias_width = max(len("aliases"), *(len(line) for lines in aliases for line in lines))
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  aliases",
             "  ".join("-" * w for w in (*widths, alias_width))]
    for spec, row, names in zip(specs, rows, aliases):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + names[0])
        lines += [" " * indent + name for name in names[1:]]
        lines += textwrap.wrap(spec.description, width, initial_indent="    ", subsequent_indent="    ")
        lines += textwrap.wrap(", ".join(spec.dtypes), width, initial_indent="    dtypes: ",
                               subsequent_indent=" " * 12)
    return lines


def _cmd_doctor(args) -> int:
    from accelc import doctor, emulate
    if args.setup_arm:
        emulate.setup(force=args.force, log=_progress)
    findings = doctor.report(Path.cwd())
    print(json.dumps(doctor.as_json(findings), indent=2) if args.json else doctor.format_findings(findings))
    return EXIT_OK


def _cmd_verify(args) -> int:
    from accelc.verify.artifact_check import reverify
    from accelc.verify.compare import format_report
    report = reverify(Path(args.artifact), samples=args.samples)
    print(format_report(report))
    return {"passed": EXIT_OK, "failed": EXIT_VERIFY_FAILED}.get(report["status"], EXIT_OK)


def _cmd_bench(args) -> int:
    from accelc.bench import run as bench
    target = Path(args.path)
    with contextlib.ExitStack() as scratch:
        if target.is_file():  # a recipe: build it first, into a temporary artifact removed when done
            from accelc.compile import build
            folder = Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix="accelc-bench-")))
            target = build(target, output=folder / "artifact", log=_progress).output
        results = bench.bench_artifact(target, args.batch, args.threads, args.calls, rounds=args.rounds)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.plot:
        note = bench.plot(results, Path(args.plot))
        print(note or f"plot: {args.plot}")
    return EXIT_OK


def _cmd_serve(args) -> int:
    from accelc.runtime.server import ServeOptions, serve
    given = {name: getattr(args, name) for name in ("max_batch_rows", "max_body_bytes", "micro_batch_ms", "threads",
                                                    "body_timeout_s")}
    options = ServeOptions(reject_nonfinite=args.reject_nonfinite,
                           **{name: value for name, value in given.items() if value is not None})  # else defaults
    serve(args.artifact, host=args.host, port=args.port, options=options, log=_progress)
    return EXIT_OK


def _cmd_inspect(args) -> int:
    from accelc.artifact.store import check_files, read_manifest
    manifest = read_manifest(Path(args.artifact))
    check_files(Path(args.artifact), manifest)
    if args.json:
        print(json.dumps(manifest, indent=2))
        return EXIT_OK
    try:
        rows = _manifest_rows(manifest)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ArtifactError(f"{args.artifact}: manifest field {exc} is missing or malformed", code="E701") from None
    _table(["field", "value"], rows)
    return EXIT_OK


def _manifest_rows(manifest: dict) -> list[tuple]:
    target = manifest["target"]
    return [("name", manifest["name"]), ("target", f"{target['name']} ({target['device']}, {target['arch']})"),
            ("batch", manifest["batch"]),
            *((f"input {i['name']}", f"{i['shape']} {i['dtype']}") for i in manifest["inputs"]),
            *((f"output {o['name']}", f"{o['shape']} {o['dtype']}") for o in manifest["outputs"]),
            ("parameters", f"{len(manifest['params'])} tensors, {manifest['param_bytes']:,} bytes"),
            ("passes", ", ".join(p["kind"] for p in manifest["passes"]) or "none"),
            ("verification", manifest["verification"]["status"]),
            ("tuning", _tuning_text(manifest.get("tuning") or {})),
            ("recipe sha256", manifest["recipe"]["sha256"][:16]),
            *((f"version {k}", v) for k, v in manifest["versions"].items()),
            *((f"file {k}", v[:16]) for k, v in manifest["files"].items())]


def _tuning_text(tuning: dict) -> str:
    if not tuning.get("tasks"):
        return "untuned (default schedules)"
    return (f"{tuning['tuned_tasks']}/{tuning['tasks']} kernels tuned, {tuning['defaulted_tasks']} on default "
            f"schedules ({tuning['trials']} new trials)")


def _table(header, rows) -> None:
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


def _progress(line: str) -> None:
    print(line, flush=True)


def _positive(text: str) -> int:
    """argparse type: an integer >= 1 (0 samples would verify nothing and pass)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _batch_sizes(text: str) -> list[int]:
    """argparse type: comma-separated batch sizes, each >= 1."""
    return [_positive(part.strip()) for part in text.split(",")]


def _output_file(text: str) -> str:
    """argparse type: a file that can be written, checked now rather than after minutes of work."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; give a file name")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{path.parent} is not an existing directory")
    if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise argparse.ArgumentTypeError(f"{text} cannot be written here: permission denied")
    return text


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
    sub = top.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="compile a recipe into a verified artifact")
    p.add_argument("recipe")
    p.add_argument("--target", help="target name or alias (overrides the recipe)")
    p.add_argument("--output", help="artifact directory (overrides the recipe)")
    p.add_argument("--no-cache", action="store_true", help="build even if these inputs were built before")
    p.set_defaults(func=_cmd_build)
    p = sub.add_parser("tune", help="tune a recipe's kernels into the tuning database (no artifact), or merge "
                       "databases")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("recipe", nargs="?", help="recipe whose tuning budget to spend")
    which.add_argument("--merge", nargs="+", metavar="DB", help="tuning databases to merge into -o OUT")
    p.add_argument("-o", "--output", help="with --merge: the database to merge into (created if absent)")
    p.add_argument("--target", help="target name or alias (overrides the recipe)")
    p.add_argument("--resume", action="store_true", help="top kernels up to their budget (records already in the "
                   "database count) instead of spending the whole budget again")
    p.set_defaults(func=_cmd_tune)
    p = sub.add_parser("validate", help="check recipes without building")
    p.add_argument("recipes", nargs="+")
    p.add_argument("--target")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_validate)
    p = sub.add_parser("schema", help="print the recipe JSON Schema (for editors)")
    p.set_defaults(func=_cmd_schema)
    p = sub.add_parser("targets", help="list known targets")
    p.set_defaults(func=_cmd_targets)
    p = sub.add_parser("doctor", help="which targets can be built and verified here, and what is missing")
    p.add_argument("--setup-arm", action="store_true", help="first make the arm64 emulation root (once, cached)")
    p.add_argument("--force", action="store_true", help="with --setup-arm: rebuild the root even if it is ready")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_doctor)
    p = sub.add_parser("verify", help="re-run an artifact's verification")
    p.add_argument("artifact")
    p.add_argument("--samples", type=_positive, help="sample batches per batch size (default: the recipe's)")
    p.set_defaults(func=_cmd_verify)
    p = sub.add_parser("bench", help="time an artifact (or a recipe, built first) against PyTorch, "
                       "torch.compile and ONNX Runtime")
    p.add_argument("path", help="recipe file or artifact directory")
    p.add_argument("--batch", type=_batch_sizes, metavar="SIZES",
                   help="comma-separated batch sizes (default: the artifact's)")
    p.add_argument("--threads", type=_positive, default=1, metavar="N", help="threads for every system (default 1)")
    p.add_argument("--calls", type=_positive, default=2000, metavar="N",
                   help="timed calls per system and batch (after warm-up)")
    p.add_argument("--rounds", type=_positive, default=5,
                   help="the systems take turns in this many rounds (median of the rounds; default 5)")
    p.add_argument("--json", type=_output_file, metavar="FILE", help="write the results as JSON here")
    p.add_argument("--plot", type=_output_file, metavar="FILE", help="write a PNG of latency vs batch size here")
    p.set_defaults(func=_cmd_bench)
    p = sub.add_parser("serve", help="serve an artifact over HTTP: JSON (POST /predict, GET /health, GET /metadata), "
                       "KServe v2 (/v2/...) and Prometheus metrics (GET /metrics)")
    p.add_argument("artifact")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed at start)")
    p.add_argument("--max-batch-rows", type=_positive, help="rows per request (default: the largest built batch)")
    p.add_argument("--max-body-bytes", type=_positive, help="larger bodies get 413 (default 8 MiB)")
    p.add_argument("--micro-batch-ms", type=float,
                   help="merge concurrent requests arriving within this many ms into one call (default 0: off)")
    p.add_argument("--reject-nonfinite", action="store_true", help="refuse NaN/Inf in float inputs (default: accept; "
                   "null means NaN)")
    p.add_argument("--threads", type=_positive, help="predictor threads (default: CPU cores, at most 4)")
    p.add_argument("--body-timeout", type=float, dest="body_timeout_s", metavar="SECONDS",
                   help="answer 408 and close a connection that sends no body bytes for this long (default 30)")
    p.set_defaults(func=_cmd_serve)
    p = sub.add_parser("inspect", help="print an artifact's manifest")
    p.add_argument("artifact")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_inspect)
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
        return args.func(args)
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
