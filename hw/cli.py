"""Shared command-line pieces: every tool reports a usage mistake as one line, no usage dump."""

import argparse

__all__ = ["OneLineParser"]


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr (`prog: error: message`), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")
