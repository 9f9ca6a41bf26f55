"""Command-line arguments for the modules that tests drive the way ``beacon-rag`` drives them."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def parse_cli(add_arguments: Callable[[argparse.ArgumentParser], object], *argv: str) -> argparse.Namespace:
    """``argv`` parsed by a parser that ``add_arguments`` filled, exactly as the CLI's subcommand parses it,
    so a test sees the defaults and the validation a user gets (a bad value exits with status 2)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))
