"""The `scoreinv` command line: parse, then call a run. Thin by design.

Each subcommand lives in `scoreinv.commands.<name>` and provides
`register(subparsers) -> argparse.ArgumentParser` (which sets `func`).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import run_reporting

COMMANDS = ["train", "sample", "data", "simulate", "reconstruct", "eval", "tune", "demo", "bench"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scoreinv",
        description="Solve inverse problems in medical imaging (sparse-view CT, undersampled MRI, "
                    "metal-artifact reduction) with score-based generative models.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f".commands.{name}", __package__).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_reporting(lambda: args.func(args), f"scoreinv {args.command}")

if __name__ == "__main__":
    sys.exit(main())
