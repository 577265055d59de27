"""The ``spikebridge`` command: one module per command in this package (its example, its flags, its
run); nothing below the CLI imports it.

The training commands (demo, pretrain, pipes, piped, finetune, benchmark) turn their flags into a
:class:`spikebridge.pipelines.plan.Request`, resolve and validate it into a run plan before any work
(``--plan`` prints it as JSON and exits), then execute it. A user error is one line on stderr and
exit status 2; an internal error exit 1 (its traceback only with ``--debug``).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import textwrap
from typing import Any, Callable

from .. import __version__
from ..errors import ConfigError, SpikebridgeError

#: The commands, each a module of this package with ``register(sub, add, common)``.
COMMANDS: tuple[str, ...] = ("demo", "pretrain", "pipes", "piped", "finetune", "benchmark", "evaluate", "export",
                             "convert", "inspect")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line (exit 2) instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        # under torchrun every process parses the flags: rank 0 tells
        self.exit(2, f"{self.prog}: error: {message[:300]} (see --help)\n" if _rank_0() else None)


def common(parser: argparse.ArgumentParser, *, flags: str = "run",
           out_help: str | None = None, out_metavar: str | None = None, out_required: bool = False) -> None:
    """The flags a command shares: ``run`` (the training commands: recipe, --set, data, model,
    device, run folder, --plan, and the SNN's T / neuron / checkpointing), ``ann`` (the same
    without the SNN's), or ``model`` (evaluate / export: a checkpoint read with data, and
    ``--code`` naming its Python class). ``out_help``: what ``--out`` is, where not a run folder."""
    parser.add_argument("--out", metavar=out_metavar, required=out_required,
                        help=out_help or "the run folder (default: the recipe's run.out, else runs/COMMAND)")
    parser.add_argument("--data", help="mnist5k | es-mnist | a dataset folder")
    if flags != "ann":
        parser.add_argument("--T", type=int, help="SNN time steps" + (
            " (event data: its frames merged into T steps; default: the checkpoint's)" if flags == "model" else ""))
    if flags == "model":
        parser.add_argument("--code", metavar="FILE.py:ClassName",
                            help="the Python class of a checkpoint of your own network (its file is checked against "
                                 "the SHA-256 the checkpoint records)")
        trust_code_flag(parser, code_flag="--code")
        return
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--config", metavar="FILE.yaml", help="a YAML recipe (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config value, e.g. --set finetune.lr=0.01 (repeatable)")
    parser.add_argument("--model", help="registry model name (e.g. cnn, resnet18, resnet18_tv, vgg11)")
    if flags != "ann":
        from ..neurons import neuron_names

        parser.add_argument("--neuron", choices=neuron_names(spiking=True), help="SNN neuron")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--resume", action="store_true", default=None, help="continue from the last complete epoch")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier run in --out (removes only what that run wrote)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (the run still prints its plan, "
                        "one line per epoch and phase, and the results)")
    if flags != "ann":
        parser.add_argument("--checkpoint-blocks", action="store_true", default=None,
                            help="activation checkpointing over blocks (less BPTT memory at large T, more time)")
    parser.add_argument("--plan", action="store_true",
                        help="print the run plan as JSON and exit: nothing is trained or written")


def trust_code_flag(parser: argparse.ArgumentParser, *, code_flag: str = "--ann") -> None:
    parser.add_argument("--trust-code", action="store_true",
                        help="a checkpoint of your own ANN class may import the class file it records (checked against "
                             f"the SHA-256 the checkpoint stores); without it such a checkpoint loads only with "
                             f"{code_flag} FILE.py:ClassName")


def ann_flags(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    trained_here = "with --ann-weights" if required else "trained here on --data unless --ann-weights is given"
    parser.add_argument("--ann", required=required, metavar="CKPT.json|MODEL|FILE.py:ClassName",
                        help="the ANN: a spikebridge ANN checkpoint, a registry model with --ann-weights (e.g. "
                             f"resnet18_tv and torchvision weights), or your nn.Module class ({trained_here})")
    parser.add_argument("--ann-weights", metavar="W.pth|W.safetensors",
                        help="trained weights for --ann MODEL or --ann FILE.py:ClassName (a state dict, or a dict "
                             "holding one under 'state_dict' or 'model')")
    parser.add_argument("--ann-kwargs", metavar="JSON", help="constructor arguments for --ann FILE.py:ClassName")
    trust_code_flag(parser)


def request(args: argparse.Namespace, command: str, *, flags: dict[str, Any] | None = None,
            options: dict[str, Any] | None = None, weights_required: bool = False):
    """The :class:`~spikebridge.pipelines.plan.Request` of a training command's flags."""
    from ..pipelines.ann import ann_source_from_flags
    from ..pipelines.plan import Request

    values: dict[str, Any] = {
        "data.name": args.data, "model.name": args.model, "model.T": getattr(args, "T", None),
        "neuron.kind": getattr(args, "neuron", None), "run.seed": args.seed, "run.device": args.device,
        "run.resume": args.resume, "run.out": args.out, "run.progress": False if args.no_progress else None,
        "model.checkpoint_blocks": getattr(args, "checkpoint_blocks", None),
    }
    values.update(flags or {})
    source = None
    if hasattr(args, "ann"):
        source = ann_source_from_flags(args.ann, args.ann_weights, getattr(args, "ann_kwargs", None),
                                       weights_required=weights_required, trust_code=getattr(args, "trust_code", False))
    options = {**(options or {}), "overwrite": args.overwrite}
    return Request(command, args.config, list(args.overrides), values, source, options)


def run_request(args: argparse.Namespace, req) -> dict | None:
    """Plan ``req`` (``--plan``: print it as JSON, exit), then execute it; returns the summary.
    Under torchrun every process makes the same plan: rank 0 alone prints it, or its refusal."""
    from ..pipelines.plan import build_plan, execute
    from ..train.distributed import launched

    try:
        plan = build_plan(req)
    except SpikebridgeError as exc:
        exc.told_by_rank_0 = True
        raise
    args.out = plan.config.run.out  # the folder the plan resolved (--out, the recipe's run.out, runs/COMMAND)
    if args.plan:
        if launched().is_main:
            print(plan.to_json())
        return None
    return execute(plan)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="spikebridge",
        description="Train accurate low-latency SNNs fast by starting them from a trained ANN.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"spikebridge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    examples = []

    def add(name: str, func: Callable, help_text: str, *, example: str | None = None, flags: str = "run",
            out_help: str | None = None,
            out_metavar: str | None = None, out_required: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text,
                           epilog=f"example:\n  {example}" if example else None,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        if flags:
            common(p, flags=flags, out_help=out_help, out_metavar=out_metavar,
                   out_required=out_required)
        # --debug after the command too; SUPPRESS keeps `spikebridge --debug CMD` working
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        if example:
            examples.append(example)
        return p

    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub, add, common)
    parser.epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
    return parser


@contextlib.contextmanager
def _distributed(args: argparse.Namespace):
    """Under ``torchrun`` (RANK / WORLD_SIZE set): join the process group for the command's
    duration (nccl when it will train on CUDA, else gloo)."""
    from ..train.distributed import launched_by_torchrun, setup_distributed, teardown_distributed

    if not launched_by_torchrun() or getattr(args, "plan", False):
        yield
        return
    import torch

    wanted = (getattr(args, "device", None) or "auto").lower()
    on_gpu = torch.cuda.is_available() and not wanted.startswith("cpu")
    setup_distributed(torch.device("cuda" if on_gpu else "cpu"))
    try:
        yield
    finally:
        teardown_distributed()


class Terminated(KeyboardInterrupt):
    """A SIGTERM (a scheduler stopping the job; torchrun passes it on): handled as a Ctrl-C is."""


#: the Ctrl-C or SIGTERM that stopped the command (:func:`run` records it): a library whose import
#: it cut may then fail with another error (numpy: "cannot load module more than once")
_STOPPED: list[KeyboardInterrupt] = []


def _stop(signum, frame) -> None:
    _STOPPED.append(Terminated() if signum == signal.SIGTERM else KeyboardInterrupt())
    raise _STOPPED[-1]


def run() -> None:
    """The ``spikebridge`` command (console script and ``python -m spikebridge``): :func:`main`,
    then exit with its status. A SIGTERM stops the run as a Ctrl-C does (exit 143). After either
    the process ends at once: a library that was interrupted while it loaded (PyTorch) may
    otherwise end it by SIGINT while Python shuts down."""
    signal.signal(signal.SIGTERM, _stop)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where the shell ignores Ctrl-C
        signal.signal(signal.SIGINT, _stop)
    code = main()
    if code in (130, 143):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _interrupted(exc: KeyboardInterrupt, advice: str | None) -> int:
    """Say (unless ``advice`` is None) that the run was interrupted or terminated; its exit status."""
    terminated = isinstance(exc, Terminated)
    if advice is not None:
        print(f"spikebridge: {'terminated' if terminated else 'interrupted'}{advice}", file=sys.stderr)
    return 143 if terminated else 130


def _rank_0() -> bool:
    """Whether this process is torchrun's rank 0, or runs without torchrun (as
    ``train.distributed.launched`` tells), read from the environment alone: it runs in the Ctrl-C
    handler, where importing PyTorch, whose own import the Ctrl-C may have cut, fails."""
    return not ("RANK" in os.environ and "WORLD_SIZE" in os.environ) or os.environ["RANK"] == "0"


def _import_torch_whole() -> None:
    """Import PyTorch with Ctrl-C and SIGTERM held back until it is loaded. Its import runs Python
    from C++ (pybind11): a KeyboardInterrupt raised there aborts the process (``terminate called
    after throwing ... error_already_set``, SIGABRT) instead of reaching :func:`main`. A signal
    that comes meanwhile is delivered as the import ends, where :func:`main` handles it."""
    if "torch" in sys.modules or not hasattr(signal, "pthread_sigmask"):  # Windows has no signal mask
        return
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        import torch  # noqa: F401
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def main(argv: list[str] | None = None) -> int:
    try:
        _import_torch_whole()  # the parser's choices (the neuron registry) load it
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # a bad flag (one line, exit 2), --help or --version (exit 0)
        return int(exc.code or 0)
    except KeyboardInterrupt as exc:
        return _interrupted(exc, "")
    except Exception:
        if _STOPPED:  # an import the Ctrl-C cut failed again
            return _interrupted(_STOPPED[0], "")
        raise

    def stopped(exc: KeyboardInterrupt) -> int:
        if not _rank_0():  # torchrun passes a Ctrl-C to every process: rank 0 tells
            return _interrupted(exc, None)
        runfolder = sys.modules.get("spikebridge.train.runfolder")  # loaded once a run folder was claimed; no import here
        kept = runfolder is not None and hasattr(args, "resume") and not getattr(args, "plan", False) and args.out \
            and os.path.exists(os.path.join(args.out, runfolder.MANIFEST))  # a run folder that was kept
        return _interrupted(exc, "; the same command with --resume continues from the last complete epoch" if kept
                            else "")

    try:
        if isinstance(getattr(args, "out", None), str) and not args.out.strip():  # an unset shell variable:
            raise ConfigError("--out is empty: give a folder path")  # not the command's default folder
        with _distributed(args):
            return int(args.func(args) or 0)
    except SpikebridgeError as exc:
        if not (getattr(exc, "told_by_rank_0", False) and not _rank_0()):  # torchrun: said once
            message = textwrap.shorten(" ".join(str(exc).split()), 1000)
            print(f"spikebridge: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        return stopped(exc)
    except BrokenPipeError:  # stdout closed early (| head): nothing more to say
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (Python flushes stdout at exit)
        return 1
    except Exception as exc:  # internal error
        if _STOPPED:  # an import the Ctrl-C cut failed again
            return stopped(_STOPPED[0])
        if getattr(args, "debug", False):
            raise
        text = textwrap.shorten(f"{type(exc).__name__}: {exc}", 300)
        print(f"spikebridge: internal error: {text} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
