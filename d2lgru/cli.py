"""The ``d2lgru`` command: ``backends``, ``train``, ``predict``, ``conformance``, ``reproduce``.

Every expected failure -- the library's own errors (:class:`d2lgru.errors.D2lgruError`: bad
input, missing data or framework, corrupt or busy checkpoint, divergence) and the operating
system's (``OSError``: read-only or full disk, a path through a file; ``MemoryError``) -- ends in
one line on stderr and exit status 2. Anything else is a bug and keeps its traceback;
``--debug`` or ``D2LGRU_DEBUG=1`` shows the traceback of every error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from pathlib import Path

from . import __version__
from .errors import InvalidArgumentError

EXIT_USAGE = 2


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def _num_preds(text):
    from .train import MAX_PREDS
    value = _positive_int(text)
    if value > MAX_PREDS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_PREDS}, got {value}")
    return value


def _add_backend_args(p):
    from .backends import BACKENDS
    p.add_argument("--backend", help=f"{', '.join(BACKENDS)} "
                                     "(default: $D2LGRU_BACKEND, else numpy)")
    p.add_argument("--impl", help="scratch (the book's loop, the default) or native (the "
                                  "framework's fused GRU layer)")


#: train options that define the run (TrainConfig field, flag); on --resume the checkpoint's
#: values stand, and a flag given with a different value is an error
_CONFIG_FLAGS = {"hidden_size": "hidden", "num_layers": "layers", "batch_size": "batch_size",
                 "num_steps": "num_steps", "max_tokens": "max_tokens", "token": "token",
                 "use_random_iter": "random_iter", "lr": "lr", "clip": "clip", "seed": "seed",
                 "reset_after": "reset_after"}


def _add_train_args(p):
    _add_backend_args(p)
    # run-defining options default to None, so that --resume can tell a given flag from a
    # default; _config() fills in TrainConfig's defaults
    p.add_argument("--mode", help="execution mode (default: the backend's fastest, see `backends`)")
    p.add_argument("--device", help="cpu (default) or the framework's gpu")
    p.add_argument("--threads", type=_positive_int,
                   help="the framework's threads (default: $D2LGRU_THREADS, else chosen from the "
                        "free CPUs and the backend's measured preference)")
    p.add_argument("--epochs", type=_positive_int,
                   help="total epochs (500; train --resume: the run's own)")
    p.add_argument("--hidden", type=_positive_int, help="hidden units (256)")
    p.add_argument("--layers", type=_positive_int, help="(1)")
    p.add_argument("--batch-size", type=_positive_int, help="(32)")
    p.add_argument("--num-steps", type=_positive_int, help="(35)")
    p.add_argument("--max-tokens", type=int, help="corpus tokens used (0 or less: all; 10000)")
    p.add_argument("--token", choices=("char", "word"), help="(char)")
    p.add_argument("--lr", type=_positive_float, help="learning rate (1)")
    p.add_argument("--clip", type=_positive_float, help="global gradient-norm clip (1)")
    p.add_argument("--random-iter", action="store_const", const=True,
                   help="random instead of sequential batches")
    variant = p.add_mutually_exclusive_group()
    variant.add_argument("--reset-after", dest="reset_after", action="store_const", const=True,
                         help="the cuDNN cell (default only where the impl lacks reset-before)")
    variant.add_argument("--reset-before", dest="reset_after", action="store_const", const=False,
                         help="the book's cell (the default where the impl has it)")
    p.add_argument("--cell", choices=("gru", "rnn"),
                   help="rnn: the plain RNN for comparison (the book's exercise 3)")
    p.add_argument("--gates", choices=("both", "reset-only", "update-only"),
                   help="gate ablation (the book's exercise 4): keep only the reset or update gate")
    p.add_argument("--data", help="The Time Machine (file or directory), or any text file")
    p.add_argument("--data-changed-ok", action="store_true",
                   help="with --resume: continue on a corpus whose SHA-1 differs from the run's")
    p.add_argument("--seed", type=int, help="(0)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an --out directory that already holds a run")
    p.add_argument("--format", choices=("npz", "safetensors"),
                   help="the checkpoint's model files (npz; a resumed run keeps its format)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


class _Parser(argparse.ArgumentParser):
    """Bad options end in one line, like every other error (argparse adds a usage block)."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="d2lgru", description="The D2L GRU chapter on NumPy and every framework the book "
                                   "teaches, held to one NumPy oracle.")
    parser.add_argument("--version", action="version", version=f"d2lgru {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of every error (also: D2LGRU_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("backends", help="list known backends, installed or not, with capabilities")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("train", help="train the book's GRU language model on The Time Machine")
    _add_train_args(p)
    p.add_argument("--out", help="checkpoint directory, written every epoch (and the plot)")
    p.add_argument("--resume", help="continue the checkpoint in this directory (to its own "
                                    "epochs, or to --epochs; on its own backend and impl unless "
                                    "--backend/$D2LGRU_BACKEND and --impl say otherwise)")
    p.add_argument("--nproc", type=_positive_int, default=1,
                   help="data-parallel worker processes on this machine, started through the "
                        "framework's launcher (torchrun) or by d2lgru; each takes batch-size / "
                        "nproc rows of every batch and one thread unless --threads says (1)")

    p = sub.add_parser("reproduce", help="the chapter's experiment into OUT/<backend>-<impl>/, "
                                         "or --collect every run under a directory into one table")
    _add_train_args(p)
    p.add_argument("--out", help="runs go to OUT/<backend>-<impl>[-<exercise>][-seed<S>]/; "
                                 "with --collect, the table, figure and runs file go to OUT")
    p.add_argument("--resume", action="store_true",
                   help="continue the run already in OUT/<backend>-<impl>[...]/ up to --epochs")
    p.add_argument("--collect", metavar="DIR", help="instead of training: write DIR/results.md "
                                                    "and DIR/perplexity.png (OUT/... with --out) "
                                                    "from DIR/*/result.json")

    p = sub.add_parser("predict", help="continue a prefix with a trained checkpoint")
    _add_backend_args(p)
    p.add_argument("--checkpoint", required=True, help="a directory written by `d2lgru train --out`")
    p.add_argument("--prefix", action="append", help="text to continue (repeatable); "
                                                     "default: 'time traveller' and 'traveller'")
    p.add_argument("--num-preds", type=_num_preds, default=50, help="tokens to emit (50; at most "
                                                                     "100000)")

    p = sub.add_parser("conformance", help="hold a backend to the NumPy oracle and write a report, "
                                           "or build the cross-framework matrix")
    p.add_argument("--backend", help="the backend to check (default: $D2LGRU_BACKEND, else numpy)")
    p.add_argument("--out", help="reports go to OUT/<backend>/ (default: $D2LGRU_CONFORMANCE_DIR, "
                                 "else ./conformance)")
    p.add_argument("--data", help="The Time Machine (file or directory; default: $D2LGRU_DATA_DIR, "
                                  "else ../shared/data)")
    p.add_argument("--cases", metavar="GLOB", action="append",
                   help="only the checks whose id matches (repeatable), e.g. "
                        "'native:gru/*/reset_after/float32'")
    p.add_argument("--matrix", metavar="DIR", help="instead of checking: build DIR/matrix.md and "
                                                   "DIR/matrix.png from DIR/*/report.json")
    _add_onnx_commands(sub)
    _add_gates_parser(sub)
    _add_sweep_parser(sub)
    for command in sub.choices.values():  # --debug also after the command's name
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the traceback of every error (also: D2LGRU_DEBUG=1)")
    return parser


def _add_onnx_commands(sub):
    p = sub.add_parser("export", help="a checkpoint's language model as one ONNX graph "
                                      "(needs d2lgru[onnx])")
    p.add_argument("--checkpoint", required=True, help="a directory written by `d2lgru train --out`")
    p.add_argument("--onnx", required=True, help="the .onnx file to write")
    p.add_argument("--overwrite", action="store_true", help="replace a file already at --onnx")

    p = sub.add_parser("import", help="an ONNX model's GRU nodes (and head) as a checkpoint "
                                      "directory or a parameter file (needs d2lgru[onnx])")
    p.add_argument("--onnx", required=True, help="the .onnx file to read")
    p.add_argument("--out", required=True, help="a checkpoint directory for a language model; a "
                                                ".npz or .safetensors file for a GRU alone")
    p.add_argument("--vocab", help="vocab.json for a language model without d2lgru's metadata")
    p.add_argument("--format", choices=("npz", "safetensors"),
                   help="the checkpoint's model file format (npz)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run already in the --out directory, or a file already at "
                        "--out")


def _add_gates_parser(sub):
    p = sub.add_parser("gates", help="draw the update and reset gates of a trained checkpoint on "
                                     "a text (values from the NumPy float64 oracle)")
    _add_backend_args(p)
    p.add_argument("--checkpoint", required=True,
                   help="a directory written by `d2lgru train --out`")
    p.add_argument("--text", default="the time traveller (for so it will be convenient to speak "
                                     "of him)", help="the text to run (cleaned as the corpus was; "
                                                        "at most 1000 tokens)")
    p.add_argument("--out", required=True, help="the figure, in the format its suffix names "
                                                "(.png, .pdf, .svg, .jpg, ...; PNG without one)")
    p.add_argument("--json", help="also write the gate values here (JSON; gzip-compressed "
                                  "when the name ends in .gz)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace files already at --out and --json")


def _add_sweep_parser(sub):
    p = sub.add_parser("sweep", help="train a grid of settings (the book's exercises 2 and 3) "
                                     "into OUT/<name=value,...>/ and compare them")
    _add_train_args(p)
    p.add_argument("--vary", metavar="NAME=V1,V2,...", action="append", required=True,
                   help="an axis of the grid (repeatable); names: hidden, layers, lr, clip, "
                        "batch-size, num-steps, cell, gates, seed")
    p.add_argument("--out", required=True, help="the sweep directory: one run per setting, "
                                                "sweep.md, sweep.png, sweep.json")
    p.add_argument("--jobs", type=_positive_int, default=1,
                   help="settings trained at once, in subprocesses with one thread each (1)")


def main(argv=None, *, command_line: bool = False) -> int:
    """Run the command line ``argv`` (``sys.argv[1:]`` by default) and return its exit status.
    ``command_line``: this process is the ``d2lgru`` command (``d2lgru.__main__``), whose
    Ctrl-C and SIGTERM become the sentence an interrupted command prints; a program calling
    this keeps its own signal handlers."""
    command = "d2lgru"
    debug = os.environ.get("D2LGRU_DEBUG", "") not in ("", "0")
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
        command = f"d2lgru {args.command}"
        debug = debug or args.debug
        if hasattr(args, "impl"):  # given or not: `train --resume` continues the run's own
            args.impl_given, args.impl = args.impl is not None, args.impl or "scratch"
        _backend_given(args)
        if command_line and _started_here():
            _preload(args)
            _take_over_signals()
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{command}: interrupted", file=sys.stderr)
        return _interrupted()
    except Exception as exc:
        line = _one_line(exc)
        if debug or line is None:
            raise
        print(f"{command}: error: {line}", file=sys.stderr)
        return EXIT_USAGE


def _started_here() -> bool:
    """Whether Ctrl-C is as ``d2lgru.__main__`` left it: its handler still holding Ctrl-C (one
    line, status 130, at once), or ignored as the command was started (``nohup``, a script's
    ``&``); not a handler of a program that imported ``d2lgru.__main__``."""
    handler = signal.getsignal(signal.SIGINT)
    return (handler is signal.SIG_IGN
            or getattr(handler, "__name__", "") == "_interrupted_at_start_up")


def _preload(args) -> None:
    """Import what the command runs on -- d2lgru's modules, NumPy, the thread and progress
    libraries and the backend's framework -- while Ctrl-C still ends the process at once, with
    one line and status 130 (``d2lgru.__main__``). Start-up is mostly imports, and a
    KeyboardInterrupt raised inside one does not reliably reach :func:`main` as itself: in
    ``d2lgru train`` interrupted 0.1-0.3 s in, one start-up in 25 to 50 ended in a RuntimeError
    (``__set_name__`` wraps what a class body raises) or printed its line and still ended by
    SIGINT (status -2, not 130); with the imports made first, none of 225 did. (An extension
    module's import can also drop the exception altogether: :func:`d2lgru._io.interrupt`.)"""
    import numpy.random  # noqa: F401  (the initial weights'; NumPy loads it when first used)
    import threadpoolctl  # noqa: F401  (the thread count's, imported by its first use)
    import tqdm  # noqa: F401  (the progress bar's)

    from . import train  # noqa: F401  (the data pipeline, the model, the backends' base)
    if hasattr(args, "backend"):
        from .backends import get_backend
        try:
            get_backend(args.backend)  # the adapter, which imports its framework
        except Exception:  # noqa: BLE001 -- the command meets it again and reports it
            pass


def _take_over_signals():
    """From here on Ctrl-C is a KeyboardInterrupt, handled below (``d2lgru.__main__`` holds it
    during start-up), and so is SIGTERM (``kill``, ``timeout``, a scheduler's stop): the same
    sentence saying what is saved, with status 143. The handler (:func:`d2lgru._io.interrupt`)
    remembers the signal, so that one whose exception C code dropped on its way is raised again
    before the next training step. A worker of a data-parallel run keeps SIGTERM's default, so
    that one its launcher stops ends at once even while it waits in a collective, where no
    Python handler runs. A Ctrl-C ignored when the command started (``nohup``, a script's
    ``&``) stays ignored, as those ask; SIGTERM is still taken over."""
    from ._io import interrupt
    from .distributed import World, serves_only
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, interrupt)
    try:
        worker = World.from_env().distributed or serves_only()
    except Exception:  # noqa: BLE001 -- a malformed world: the command reports it
        worker = True
    if not worker:
        signal.signal(signal.SIGTERM, interrupt)


def _interrupted() -> int:
    """The exit status of an interrupted command: 128 + the signal's number (SIGINT's, 130,
    for a KeyboardInterrupt not raised by :func:`d2lgru._io.interrupt`).

    It also clears CPython's record of a KeyboardInterrupt that ended a string ``exec`` or
    ``eval`` (``namedtuple`` and ``dataclass`` build their classes that way, and a lazy import
    in the first step makes some). Under ``python -m d2lgru`` the interpreter reads that record
    at exit and, though the command handled the interrupt and printed its sentence, ends the
    process by SIGINT (status -2) instead of with the status returned here (seen in CI, a
    ``train`` interrupted 0.2 s in). Every string evaluation starts by clearing the record, so
    an empty one does.
    """
    from ._io import interrupt_handled
    exec("")  # noqa: S102 -- clears the record, see above
    return 128 + (interrupt_handled() or signal.SIGINT)


def _one_line(exc) -> str | None:
    """The sentence for an expected failure, or None for a bug (its traceback is kept)."""
    from .errors import D2lgruError
    if isinstance(exc, D2lgruError):
        return " ".join(str(exc).split("\n"))
    if isinstance(exc, MemoryError):
        return (f"out of memory ({exc or 'MemoryError'}); choose a smaller --hidden, --layers "
                f"or --batch-size")
    if isinstance(exc, OSError):
        where = " ".join(repr(str(f)) for f in (exc.filename, exc.filename2) if f is not None)
        return f"{exc.strerror or exc}{': ' + where if where else ''}"
    return None


def cmd_backends(args) -> int:
    from .backends import (BACKENDS, get_backend, install_hint, is_installed, plugin_backends,
                           source_of)
    rows, plugins = [], plugin_backends()
    entries = [(name, None) for name in BACKENDS] + sorted(plugins.items())
    for name, plugin in entries:
        if plugin is not None and plugin.problem:  # a clash: listed, never loaded
            rows.append({"name": name, "source": plugin.source, "installed": False,
                         "error": plugin.problem})
            continue
        row = {"name": name, "source": source_of(name), "installed": is_installed(name)}
        if row["installed"]:
            try:
                be = get_backend(name)
                absent = be.devices_not_here()
                row.update(version=be.version(), devices_not_here=absent,
                           devices=[d for d in be.devices if d not in absent],
                           impls=be.capabilities(),
                           distributed={"supported": be.distributed_refusal is None,
                                        "why_not": be.distributed_refusal})
            except Exception as exc:  # a broken install is reported, not fatal for the listing
                row.update(installed=False, error=f"{type(exc).__name__}: {exc}")
        else:
            row["install"] = install_hint(name)
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        origin = "" if row["source"] == "built-in" else f"  [{row['source']}]"
        if not row["installed"]:
            print(f"{row['name']:<11} not installed  ({row.get('error') or row['install']})"
                  f"{origin}")
            continue
        absent = row["devices_not_here"]
        why = set(absent.values())
        print(f"{row['name']:<11} {row['version']:<13} devices: {', '.join(row['devices'])}"
              + (f" (not here: {', '.join(absent)}: {why.pop()})" if len(why) == 1 else
                 "".join(f" (not here: {d}: {w})" for d, w in absent.items()))
              + origin)
        for impl, info in row["impls"].items():
            cells = [c for c, ok in (("reset-before", info["reset_before"]),
                                     ("reset-after", info["reset_after"])) if ok]
            print(f"  {impl:<8} {', '.join(cells)}; layers: {info['max_layers'] or 'any'}; "
                  f"bidirectional: {'yes' if info['bidirectional'] else 'no'}; "
                  f"dtypes: {', '.join(info['dtypes'])}; modes: {', '.join(info['modes'])}"
                  + (f"; gates: {', '.join(info['gates'])}" if info["gates"] != ["both"] else ""))
            for why in info["why_not"].values():
                print(f"           {why}")
        if "distributed" in row:
            why = row["distributed"]["why_not"]
            print(f"  data-parallel (--nproc): {'yes' if why is None else 'no; ' + why}")
    return 0


def _progress_bar(quiet, header):
    """The progress callback (and the tqdm bar to close): a bar on a terminal, else a log line
    every tenth of the run. ``header`` (backend, impl, mode, device, threads) goes first, once
    the first epoch has run: an error before that stays the only line on stderr."""
    if quiet:
        return None, None
    first = [True]

    def say_header(write):
        if first[0]:
            first[0] = False
            write(header)

    if not sys.stderr.isatty():  # logs get a line every tenth of the run instead of a bar
        def log(epoch, total, record):
            say_header(lambda line: print(line, file=sys.stderr, flush=True))
            if epoch % max(1, total // 10) == 0 or epoch == total:
                print(f"epoch {epoch}/{total}: perplexity {record['perplexity']:.2f}, "
                      f"{record['tokens_per_sec']:.0f} tokens/sec", file=sys.stderr, flush=True)
        return log, None
    from tqdm import tqdm
    bar = tqdm(unit="epoch", file=sys.stderr, dynamic_ncols=True)

    def update(epoch, total, record):
        say_header(bar.write)
        bar.total = total
        bar.n = epoch
        bar.set_postfix(perplexity=f"{record['perplexity']:.2f}",
                        tok_s=f"{record['tokens_per_sec']:.0f}", refresh=False)
        bar.refresh()

    return update, bar


def _note_not_the_books_text(data):
    """A note when the corpus is named ``timemachine.txt`` but is not the book's file (a
    truncated or edited copy): it trains as given, but its perplexities are not the book's."""
    from . import data as d2data
    from .train import corpus_sha1

    path = d2data.find_time_machine(data)
    if path.name == d2data.TIME_MACHINE_FILENAME:
        sha1 = corpus_sha1(path)
        if sha1 != d2data.TIME_MACHINE_SHA1:
            print(f"note: {path} is not the book's The Time Machine (SHA-1 {sha1}, the book's "
                  f"is {d2data.TIME_MACHINE_SHA1}): it trains as given, but its perplexities "
                  "will not be the book's", file=sys.stderr)


def _config(args, backend):
    """``(TrainConfig, expect)``: the run's configuration from the flags (TrainConfig's defaults
    where a flag is absent) and the fields the user gave explicitly, which a resumed run's
    checkpoint must agree with."""
    from .train import TrainConfig, choose_reset_after
    cell, gates = args.cell or "gru", args.gates
    if cell == "rnn" and gates not in (None, "both"):
        raise InvalidArgumentError("--gates applies to --cell gru only; the plain RNN has no gates")
    expect = {field: getattr(args, flag) for field, flag in _CONFIG_FLAGS.items()
              if getattr(args, flag) is not None}
    if args.cell is not None or gates is not None:
        expect["gates"] = "none" if cell == "rnn" else (gates or "both")
    if args.resume is None and "reset_after" not in expect:
        expect["reset_after"] = choose_reset_after(backend, args.impl)
    data = _data_given(args)
    data = str(Path(data).resolve()) if data is not None else None
    epochs = args.epochs
    if epochs is None:  # a resumed run's target stands (the Ctrl-C hint says --resume alone)
        from .checkpoint import run_config
        epochs = (run_config(args.resume).epochs if args.command == "train" and args.resume
                  else TrainConfig.epochs)
    return TrainConfig(**expect, epochs=epochs, data=data), expect


def _saved_so_far(args) -> str:
    """What the checkpoint of an interrupted run holds now, and how to go on."""
    from .checkpoint import CheckpointError, read_state
    from .train import nothing_saved
    out = args.out or args.resume
    try:
        epoch = read_state(out)["epoch"] if out else 0
    except CheckpointError:
        epoch = 0
    if not epoch:
        return nothing_saved(out)
    return f"the checkpoint in {out} keeps epoch {epoch}; {_resume_hint(args)}"


def _resume_hint(args) -> str:
    if args.command == "reproduce":
        return (f"continue with the same `d2lgru reproduce` command plus --resume "
                f"(--out {args.out_root})")
    return f"continue with --resume {args.out or args.resume}"


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line a launched worker runs: the parent's, less ``--nproc N``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def _launch_workers(args, backend) -> int:
    """``d2lgru train --nproc W``: the same command as W data-parallel workers on this machine."""
    from .distributed import World, check_batch_size, launch
    if World.from_env().distributed:
        raise InvalidArgumentError("--nproc starts workers on this machine, but this process "
                                   "already is one (its environment names a rank and a world "
                                   "size); drop --nproc")
    world = World(0, args.nproc)
    if args.resume is not None:  # the run's own batch size (a --batch-size that differs is
        from .checkpoint import load  # refused by the workers, as without --nproc)
        check_batch_size(load(args.resume)["config"].batch_size, world)
    else:
        from .config import TrainConfig
        check_batch_size(args.batch_size or TrainConfig.batch_size, world)
    if backend.distributed_refusal is not None:
        from .backends import UnsupportedError
        raise UnsupportedError(f"backend {backend.name!r} cannot train on {args.nproc} "
                               f"processes: {backend.distributed_refusal}")
    env = dict(os.environ, D2LGRU_BACKEND=backend.name)
    if args.threads is not None:
        env["D2LGRU_THREADS"] = str(args.threads)
    return launch(backend.name, args.nproc, _without_nproc(args.argv), env=env)


def cmd_train(args) -> int:
    from .backends import get_backend
    from .checkpoint import foreign_files, open_run
    from .distributed import World
    from .train import TrainingInterrupted, train
    _directories_given(args, "out", "resume")
    if args.out:
        _holds_only_ours(args, "out", "run", foreign_files(args.out))
    if args.command == "train" and args.resume:
        _continue_as_it_was(args)
    backend = get_backend(args.backend)
    if getattr(args, "nproc", 1) > 1:
        try:
            return _launch_workers(args, backend)
        except KeyboardInterrupt:  # the workers are stopped: say what their checkpoint holds
            print(f"d2lgru {args.command}: interrupted; {_saved_so_far(args)}", file=sys.stderr)
            return _interrupted()
    from .distributed import serves_only
    if args.command == "train" and serves_only():
        return backend.serve_world()  # msrun's scheduler, started with the workers' command
    world = World.from_env() if args.command == "train" else World()
    _resume_or_overwrite(args)
    config, expect = _config(args, backend)
    if args.resume is None and args.data_changed_ok:
        raise InvalidArgumentError("--data-changed-ok applies to --resume only")
    out = args.out or args.resume
    if not world.is_chief:
        out = None  # rank 0 alone opens, writes and reports; the others train their rows
    if world.distributed and args.threads is None and not os.environ.get("D2LGRU_THREADS"):
        # W workers share the machine: one thread each unless asked (launch() sets the same)
        backend.set_threads(1)
    else:
        backend.set_threads(args.threads)  # None: $D2LGRU_THREADS, else the policy
    header = (f"d2lgru {args.command}: {backend.name} {args.impl} "
              f"({backend.check_mode(args.impl, args.mode)}) on {args.device or 'cpu'}, "
              f"{backend.threads} thread(s) ({backend.threads_source})"
              + (f", {world.size} processes" if world.distributed else ""))
    from .threads import usable_cpus
    cpus = usable_cpus()
    if backend.threads_source in ("argument", "$D2LGRU_THREADS") and backend.threads > cpus \
            and world.is_chief:
        print(f"note: {backend.threads} threads on {cpus} usable CPU(s): threads that wait for a "
              f"core make training many times slower; --threads {cpus} or less is faster",
              file=sys.stderr)
    if world.is_chief:
        _note_not_the_books_text(config.data)
    update, bar = _progress_bar(args.quiet or not world.is_chief, header)
    with open_run(out, resume=args.resume if world.is_chief else None,
                  overwrite=args.overwrite, format=args.format) as writer:
        try:
            result = train(config, backend=backend, impl=args.impl, mode=args.mode,
                           device=args.device, out=writer, resume=args.resume, progress=update,
                           expect=expect, data_changed_ok=args.data_changed_ok, world=world)
        except TrainingInterrupted as exc:
            if bar is not None:
                bar.close()
                bar = None
            hint = f"; {_resume_hint(args)}" if exc.saved else ""
            if world.is_chief:
                print(f"d2lgru {args.command}: {exc}{hint}", file=sys.stderr)
            return _interrupted()
        finally:
            if bar is not None:
                bar.close()
        if not world.is_chief:
            return 0
        try:
            _report(args, backend, result, writer, out)
        except KeyboardInterrupt:
            where = "" if writer is None else (
                f": all {result.epoch} epochs are saved in {out}, result.json and the plot may "
                f"not be; {_resume_hint(args)} to write them")
            print(f"d2lgru {args.command}: interrupted after training{where}", file=sys.stderr)
            return _interrupted()
    return 0


def _report(args, backend, result, writer, out) -> None:
    """What a finished training prints, and writes beside its checkpoint."""
    from .train import plot_history, predict, write_result
    if result.epochs_run == 0:
        print(f"nothing to train: the checkpoint already holds {result.epoch} epoch(s)",
              file=sys.stderr)
    print(f"perplexity {result.perplexity:.1f}, {result.tokens_per_sec:.1f} tokens/sec on "
          f"{result.device} ({backend.name} {args.impl})")
    spike = spike_note(result.history)
    if spike:
        print(spike, file=sys.stderr)
    predictions = {}
    for prefix in ("time traveller", "traveller"):
        predictions[prefix] = predict(prefix, 50, result.model, result.vocab, backend=backend,
                                      impl=args.impl, token=result.config.token)
        print(predictions[prefix])
    if writer is not None:
        plot = plot_history(result.history, writer.path / "perplexity.png",
                            f"{backend.name} {args.impl}")
        write_result(writer, result, backend, args.impl, predictions)
        print(f"checkpoint, result.json and plot in {out} ({plot.name})")


def spike_note(history, ratio: float = 1.1) -> str | None:
    """One sentence when the last epoch stands ``ratio`` above where the run settled."""
    from .train import SETTLED_EPOCHS, settled
    if len(history) < SETTLED_EPOCHS:
        return None
    last, median = history[-1]["perplexity"], settled([h["perplexity"] for h in history])
    if last <= ratio * median:
        return None
    return (f"note: the last epoch (perplexity {last:.2f}) fell in a transient loss spike; the "
            f"last {SETTLED_EPOCHS} epochs' median is {median:.2f} (SGD at lr 1 spikes late in "
            f"training, the book's own code too; see README.md)")


def cmd_predict(args) -> int:
    from .train import load_checkpoint, predict
    ckpt = load_checkpoint(args.checkpoint)
    for prefix in args.prefix or ["time traveller", "traveller"]:
        print(predict(prefix, args.num_preds, ckpt["model"], ckpt["vocab"], backend=args.backend,
                      impl=args.impl, token=ckpt["config"].token))
    return 0


def _new_files(args, *flags) -> None:
    """The command's output files (``--out``, ``--json``, ...): one that exists is replaced
    only with ``--overwrite``, and no two may be the same file. (A directory there is the
    writer's to refuse, and a checkpoint directory is guarded by the checkpoint itself.)"""
    seen = {}
    for flag in flags:
        path = getattr(args, flag.lstrip("-"))
        if path is None:
            continue
        if path == "":  # "--out $FILE" with FILE unset
            raise InvalidArgumentError(f"{flag} is empty; give a file path")
        real = os.path.realpath(path)
        if real in seen:
            raise InvalidArgumentError(f"{seen[real]} and {flag} name the same file ({path}); "
                                       f"give each its own")
        seen[real] = flag
        if not args.overwrite and os.path.lexists(path) and not os.path.isdir(path):
            raise InvalidArgumentError(f"{flag} {path} already exists; give --overwrite to "
                                       f"replace it, or choose another {flag}")


def cmd_export(args) -> int:
    from .onnx_io import export_checkpoint
    _new_files(args, "--onnx")
    path = export_checkpoint(args.checkpoint, args.onnx)
    print(f"ONNX model written to {path}")
    return 0


def cmd_import(args) -> int:
    from .onnx_io import import_onnx
    from .checkpoint import foreign_files
    if Path(args.out).suffix in (".npz", ".safetensors"):  # a file, not a checkpoint directory
        _new_files(args, "--out")
    else:
        _directories_given(args, "out")
        _holds_only_ours(args, "out", "run", foreign_files(args.out))
    print(import_onnx(args.onnx, args.out, vocab_path=args.vocab, format=args.format,
                      overwrite=args.overwrite))
    return 0


def cmd_conformance(args) -> int:
    from .conformance import build_matrix, run_command
    if args.matrix is not None:
        if args.backend or args.cases:
            raise InvalidArgumentError("--matrix builds the matrix from existing reports; it takes no "
                                       "--backend or --cases")
        md, png = build_matrix(args.matrix)
        print(f"matrix written: {md} and {png}")
        return 0
    _not_a_file(args, "out")
    return run_command(args.backend, args.out, _data_given(args), args.cases)


def cmd_reproduce(args) -> int:
    from .reproduce import run_name, write_report
    if args.collect is not None:
        _directories_given(args, "out")
        _not_a_file(args, "out")
        table, plot = write_report(args.collect, out=args.out)
        print(table.read_text())
        print(f"table and figure written: {table} and {plot}")
        return 0
    if not args.out:
        raise InvalidArgumentError("reproduce needs --out DIR (where the run goes) or --collect DIR")
    from .backends import get_backend
    exercise = "" if (args.cell or "gru") == "gru" and args.gates in (None, "both") else \
        ("rnn" if args.cell == "rnn" else args.gates)
    args.out_root = args.out
    run_dir = str(Path(args.out) / run_name(get_backend(args.backend).name, args.impl,
                                            exercise, args.seed or 0))
    from .checkpoint import describe_run, has_run
    if not args.resume and not args.overwrite and has_run(run_dir):
        raise InvalidArgumentError(f"{run_dir} already holds a run ({describe_run(run_dir)}); "
                                   f"continue it with the same command plus --resume, start over "
                                   f"with --overwrite, or choose another --out")
    _resume_or_overwrite(args)
    if args.resume:
        if not has_run(run_dir):
            args.resume = None  # nothing to continue yet: start the run
        else:
            args.resume = run_dir
    else:
        args.resume = None
    args.out = run_dir
    args.data_changed_ok = getattr(args, "data_changed_ok", False)
    return cmd_train(args)


def _continue_as_it_was(args) -> None:
    """``train --resume DIR`` continues on the backend and impl of the run's last epoch, as it
    continues the run's other settings, unless --backend (or $D2LGRU_BACKEND) and --impl say
    otherwise: the sentence an interrupted run prints says only ``--resume DIR``."""
    from .checkpoint import read_state
    from .errors import D2lgruError
    try:
        history = read_state(args.resume)["history"]  # checked: a list of dicts, one an epoch
    except D2lgruError:  # not a checkpoint: opening the run says so
        return
    last = history[-1] if history else {}
    if not (args.backend or os.environ.get("D2LGRU_BACKEND")) and isinstance(
            last.get("backend"), str):
        args.backend = last["backend"]
    if not args.impl_given and isinstance(last.get("impl"), str):
        args.impl = last["impl"]


def _given(args, flag, what) -> None:
    """An option given as "" ("--out $DIR" with DIR unset) is refused, never taken for absent
    (the default) or for the working directory."""
    if getattr(args, flag, None) == "":
        raise InvalidArgumentError(f"--{flag} is empty; give {what}")


def _directories_given(args, *flags) -> None:
    for flag in flags:
        _given(args, flag, "a directory")


def _backend_given(args) -> None:
    """``--backend ""`` names no backend: refused, where leaving it out means the default."""
    if getattr(args, "backend", None) == "":
        from .backends import available_backends
        _given(args, "backend", f"a backend's name (installed here: "
                                f"{', '.join(available_backends())}; `d2lgru backends` lists "
                                f"every known one), or leave --backend out for $D2LGRU_BACKEND, "
                                f"else numpy")


def _data_given(args) -> str | None:
    """``--data`` checked as training reads it (:func:`d2lgru.data.find_time_machine`: a text
    file, or a directory that holds timemachine.txt), before the work; None when not given."""
    _given(args, "data", "a text file or a directory that holds timemachine.txt")
    if args.data is not None:
        from .data import find_time_machine
        find_time_machine(args.data)
    return args.data


def _not_a_file(args, flag) -> None:
    """A directory a command makes or fills (``sweep --out``, ``conformance --out``,
    ``reproduce --collect --out``), refused before the work when a file is in its place."""
    path = getattr(args, flag)
    if path and os.path.lexists(path) and not os.path.isdir(path):
        raise InvalidArgumentError(f"--{flag} {path} is a file, not a directory; name a "
                                   f"directory")


def _holds_only_ours(args, flag, kind, foreign) -> None:
    """An existing ``--out`` directory with files d2lgru did not write (``foreign``: a user's
    folder, or another command's output) is refused before the work: a new run or sweep would
    mix its files with them."""
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3
                                          else "")
        raise InvalidArgumentError(f"--{flag} {getattr(args, flag)} holds files that are not a "
                                   f"d2lgru {kind} ({shown}); choose a new or empty directory")


def _resume_or_overwrite(args) -> None:
    if args.resume and args.overwrite:
        raise InvalidArgumentError("--resume continues the run and --overwrite starts it over; "
                                   "give one of them")


def cmd_gates(args) -> int:
    from .checkpoint import load
    from ._io import figure_format, make_directory
    from .gates import checkpoint_gates, plot_gates, write_json
    _new_files(args, "--out", "--json")
    figure_format(args.out, "--out")
    ckpt = load(args.checkpoint)
    for flag, path in (("--out", args.out), ("--json", args.json)):  # before the backend runs
        if path:
            make_directory(Path(path).parent, f"the directory of {flag}",
                           hint=f"choose another {flag}")
    record = checkpoint_gates(ckpt, args.text, backend=args.backend, impl=args.impl,
                              name=Path(args.checkpoint).resolve().name)
    plot = plot_gates(record, args.out)
    check = record["backend_check"]
    print(f"{len(record['tokens'])} tokens through a {record['checkpoint']['spec']}; gates from "
          f"the NumPy float64 oracle ({check['backend']} {check['impl']} agrees within "
          f"{check['max_abs_diff_Y']:.1e}); figure: {plot}"
          + (f", values: {write_json(record, args.json)}" if args.json else ""))
    return 0


def cmd_sweep(args) -> int:
    from .backends import get_backend
    from .sweep import (AXES, check_settings, dropped_settings, foreign_entries, grid,
                        parse_vary, run_sweep, saved_grid, saved_sweep, settings_to_train,
                        write_report)
    from .train import TrainingInterrupted
    _directories_given(args, "out")
    _not_a_file(args, "out")
    saved = saved_sweep(args.out)
    _holds_only_ours(args, "out", "sweep", foreign_entries(args.out))
    backend = get_backend(args.backend)
    vary = parse_vary(args.vary)
    both = [n for n in vary if getattr(args, AXES[n][1]) is not None]
    if both:
        raise InvalidArgumentError(f"{', '.join(both)} is both fixed (--{both[0]}) and varied "
                                   f"(--vary {both[0]}=...); give one of them")
    args.resume = None  # the sweep resumes each setting that holds a checkpoint itself
    config, expect = _config(args, backend)
    settings = grid(config, expect, vary)
    dropped = dropped_settings(saved, settings) if saved and not args.overwrite else []
    if dropped:  # the summary is rewritten for this grid: it must not lose the saved settings
        raise InvalidArgumentError(
            f"--out {args.out} holds a sweep whose summary also covers {', '.join(dropped)}, "
            f"which this grid would drop; give all of them again (the saved grid is "
            f"{saved_grid(saved)}), choose another --out, or give --overwrite to train this "
            f"grid anew and summarise it alone")
    check_settings(settings, backend, args.impl, args.mode, args.device)
    to_train = settings_to_train(settings, args.out, args.overwrite)
    jobs = max(1, min(args.jobs, to_train))
    if 0 < to_train < args.jobs:
        print(f"note: --jobs {args.jobs}, but {to_train} of the {len(settings)} settings "
              f"{'is' if to_train == 1 else 'are'} left to train, so {jobs} run at a time",
              file=sys.stderr)
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        records = run_sweep(settings, args.out, backend=backend, impl=args.impl, mode=args.mode,
                            device=args.device, jobs=jobs, overwrite=args.overwrite,
                            data_changed_ok=args.data_changed_ok, log=log,
                            threads=args.threads, format=args.format)
    except (KeyboardInterrupt, TrainingInterrupted):
        print(f"d2lgru sweep: interrupted; every finished setting and checkpoint in {args.out} is "
              f"kept: run the same command again to resume", file=sys.stderr)
        return _interrupted()
    if not to_train and saved and type(saved.get("jobs")) is int:
        jobs = saved["jobs"]  # nothing ran now: the kept settings' seconds are the saved ones
    md, png, js = write_report(args.out, records, backend=backend.name, impl=args.impl,
                               base=config, vary=vary, jobs=jobs)
    print(md.read_text(), end="")
    print(f"table, figure and values written: {md}, {png}, {js}")
    return 0


COMMANDS = {"backends": cmd_backends, "train": cmd_train, "predict": cmd_predict,
            "conformance": cmd_conformance, "reproduce": cmd_reproduce,
            "export": cmd_export, "import": cmd_import,  # d2lgru.onnx_io, the onnx extra
            "gates": cmd_gates, "sweep": cmd_sweep}


if __name__ == "__main__":
    sys.exit(main())
