"""``sacvit <command>``: one subcommand per user task.

Each command's argument parsing lives in ``sacvit.cli.<command>``, which exposes
``add_parser(subparsers)``: it registers the arguments and sets ``func`` to the function that
runs the command through the library. Errors a user can fix (a missing dataset, a bad
checkpoint, a wrong argument) are printed as one line, without a traceback, and exit with
status 2; an operating-system error the user did not cause by the arguments (a full disk while
saving) is printed as one line and exits with status 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "train": "sacvit.cli.train",
    "eval": "sacvit.cli.eval",
    "bench": "sacvit.cli.bench",
    "demo": "sacvit.cli.demo",
    "standin": "sacvit.cli.standin",
    "predict": "sacvit.cli.predict",
    "visualize": "sacvit.cli.visualize",
    "calibrate": "sacvit.cli.calibrate",
    "export": "sacvit.cli.export",
}

_EXAMPLES = """\
examples:
  sacvit demo                                       # the README's evidence at the `make demo` budget
  sacvit train --data imagefolder --data-dir DIR --out-dir runs/mine   # DIR/train/<class>/*.jpg
  sacvit calibrate --checkpoint runs/mine/last.safetensors --max-drop 0.5 --data imagefolder --data-dir DIR
  sacvit predict photo.jpg --checkpoint runs/mine/last.safetensors

`sacvit COMMAND --help` shows a command's options and examples.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sacvit",
        description="SAC-ViT: a ViT that exits early on easy images and spends full-resolution "
                    "compute only on the object region of the hard ones.",
        epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"sacvit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):  # plain `sacvit`: the overview, not an error
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"sacvit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a lost mount, …
        print(f"sacvit {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sacvit {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
