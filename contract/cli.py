"""What every command-line program of the project shares: argparse with one-line errors."""

from __future__ import annotations

import argparse
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line and a hint, exit code 2 (argparse's own prints the whole usage
    block first, which buries the message)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message}\nsee {self.prog} --help\n")
