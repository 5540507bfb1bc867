"""The `dicom-node` console script: node operation and the offline tools, one entry point."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable

from inference.api import OFFLINE_COMMANDS, configure_heap, package_version

# command -> (module, add-arguments function, run function, help)
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "serve": ("dicom_node.service", "add_serve_arguments", "run_serve",
              "run the node (listener, completion, worker, dispatch, retention)"),
    "status": ("dicom_node.service", "add_status_arguments", "run_status", "list series and jobs with their states"),
    "retry": ("dicom_node.service", "add_retry_arguments", "run_retry",
              "queue a failed job's results for sending again"),
    "backup": ("dicom_node.backup", "add_arguments", "run",
               "consistent copy of the live catalog (SQLite online backup)"),
    "demo": ("testbed.demo", "add_arguments", "run",
             "end to end on the bundled sample: Orthanc, node, storescu, SEG+SR back"),
    "rules": ("dicom_node.rules_cli", "add_rules_arguments", "run_rules", "routing rules: `rules test FILE_OR_DIR`"),
    **OFFLINE_COMMANDS,  # segment, analyze-lesion, evaluate: inference's offline tools
    # a dev tool (testbed/): loaded only for this command; "not available in this build" where testbed is absent
    "make-series": ("testbed.series", "add_arguments", "run", "write a NIfTI volume as a DICOM MR series"),
}

# import name of an optional dependency -> how to get it. A command whose module needs one of
# these, missing here, is "not available in this build"; any other import error is a real error
# and propagates. testbed (the dev tools: demo, make-series) is in a source checkout, not in the
# node's container image.
OPTIONAL_PACKAGES: dict[str, str] = {
    "ray": "pip install 'spine-dicom-node[ray]'",
    "testbed": "run it from a source checkout, whose testbed/ holds the dev tools",
}


def missing_optional(exc: ImportError) -> str | None:
    """The optional package whose absence raised `exc`, or None when `exc` is anything else
    (a missing required package, a broken module of ours, an ImportError raised inside one)."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    top = exc.name.partition(".")[0]
    return top if top in OPTIONAL_PACKAGES else None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command, with the arguments of `command` only (all of them when None).

    Why: a command's module is imported to add its arguments, and the node's modules pull in
    pynetdicom, highdicom and YAML; `dicom-node segment` run once per case should not pay for
    them, nor `dicom-node status` for torch.
    """
    parser = argparse.ArgumentParser(prog="dicom-node", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, add_fn, _run, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if command is not None and name != command:
            continue
        try:
            getattr(importlib.import_module(module), add_fn)(p)
        except ModuleNotFoundError as exc:
            optional = missing_optional(exc)
            if optional is None:
                raise
            p.set_defaults(_unavailable=f"{name}: not available in this build ({module} needs the optional "
                                        f"package {optional}: {OPTIONAL_PACKAGES[optional]})")
    return parser


def _command(argv: list[str]) -> str:
    """The command named on the line: the first word that is not an option ("" if none)."""
    return next((word for word in argv if not word.startswith("-")), "")


def main(argv: list[str] | None = None) -> int:
    configure_heap()  # before any thread starts: tensors' memory is reused between tiles (inference.heap)
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(_command(argv))
    args, unknown = parser.parse_known_args(argv)
    if getattr(args, "_unavailable", None):  # before judging its arguments: it has none here
        print(args._unavailable, file=sys.stderr)
        return 2
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    module, _add, run_fn, _help = COMMANDS[args.command]
    runner: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), run_fn)
    return int(runner(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
