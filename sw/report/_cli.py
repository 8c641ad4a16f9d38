"""Command-line pieces the report and the sweep share: board, output folder and cache options,
one-line errors, printing the tables and writing the page."""

import sys

__all__ = ["UsageError", "add_common", "fail", "open_board", "finish"]


class UsageError(ValueError):
    """A mistake in the command line (exit status 2)."""


def add_common(parser, out_help):
    """--board, --out and --cache."""
    import boards
    parser.add_argument("--board", default=boards.DEFAULT_BOARD,
                        help=f"{', '.join(boards.BOARDS)} (default {boards.DEFAULT_BOARD})")
    parser.add_argument("--out", default=None, help=out_help)
    parser.add_argument("--cache", default=None,
                        help="resource estimate cache (default build/report_cache/resources.json)")


def fail(prog, message, status=1):
    """Print `prog: error: message` on stderr; return the exit status."""
    sys.stderr.write(f"{prog}: error: {message}\n")
    return status


def open_board(args):
    """(board, resource cache) of the parsed arguments; UsageError for an unknown board."""
    import boards

    from .resources import DEFAULT_CACHE, ResourceCache
    try:
        board = boards.get_board(args.board)
    except KeyError as error:
        raise UsageError(error.args[0]) from None
    return board, ResourceCache(args.cache or DEFAULT_CACHE)


def finish(prog, text, out, write):
    """Print the Markdown `text`; with an `out` folder, `write(out)` the page and name it."""
    print(text)
    if out:
        try:
            page = write(out)
        except ImportError as error:
            return fail(prog, str(error))
        except OSError as error:
            return fail(prog, f"Cannot write to {out}: {error.strerror or error}")
        print(f"\nwritten to {page}")
    return 0
