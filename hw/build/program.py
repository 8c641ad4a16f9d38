"""Programming a board with a finished build: `program(result)`, `python -m hw.build --program`.

Each board lists its `boards.Programmer`s (openFPGALoader, iceprog, Vivado's hardware manager) in the
order to try; the first one installed loads the bitstream, as amaranth-boards' platforms do. A
programmer's environment variable (``OPENFPGALOADER``, ``ICEPROG``, ``VIVADO``) names the tool's path
and wins over PATH. Every failure is one `BuildError` line: no bitstream, no programmer, the
programmer failing (no board connected) or not finishing within the timeout.
"""

import os
import shutil
from pathlib import Path

from .toolchain import BuildError, run_step

__all__ = ["PROGRAM_TIMEOUT", "find_programmer", "program"]

#: Seconds a programmer may take before it is stopped (Vivado's hardware manager starts slowly).
PROGRAM_TIMEOUT = 300.0


def find_programmer(board, environ=None):
    """(programmer, executable path): the first of the board's programmers whose variable is set,
    else the first installed on PATH.

    Raises `BuildError` when none is: the message names each tool and its variable.
    """
    environ = os.environ if environ is None else environ
    if not board.programmers:
        raise BuildError(f"No programmer is known for the {board.name} board")
    # A programmer whose variable is set was chosen by the user: it wins over any tool on PATH.
    for programmer in board.programmers:
        configured = environ.get(programmer.env)
        if configured:
            found = shutil.which(configured, path=environ.get("PATH"))
            if found is None:
                raise BuildError(f"{programmer.env}={configured} is not an executable program")
            return programmer, found
    for programmer in board.programmers:
        found = shutil.which(programmer.tool, path=environ.get("PATH"))
        if found is not None:
            return programmer, found
    tried = " or ".join(f"{p.tool} (or set {p.env} to its path)" for p in board.programmers)
    raise BuildError(f"Cannot program the {board.name}: no programmer found; install {tried}")


def _check_built(result):
    board = result.board
    # A Vivado plan run by hand (`sh build_top.sh`) leaves top.bit next to it.
    if "bitstream" not in result.files and not (
            board.flow == "vivado-plan" and (Path(result.out) / "top.bit").is_file()):
        if board.flow == "vivado-plan":
            raise BuildError(
                f"No bitstream to program: Vivado is not on PATH, so the {board.name} build wrote only "
                f"the Vivado plan; run `cd {result.out} && sh build_top.sh` where Vivado is installed, "
                f"then --program")
        raise BuildError(f"No bitstream to program: the {board.name} build did not produce one")


def _bitstream(result, programmer):
    path = Path(result.out) / programmer.bitstream
    if not path.is_file():
        raise BuildError(f"No bitstream to program: {path} is missing")
    return path


def program(result, *, timeout=PROGRAM_TIMEOUT, environ=None):
    """Load `result`'s bitstream (a `BuildResult`) into its board; the programmer's log path.

    Raises `BuildError` with one line when there is no bitstream, no programmer, or the programmer
    fails or times out (typically: no board connected).
    """
    board = result.board
    _check_built(result)
    programmer, executable = find_programmer(board, environ)
    bitstream = _bitstream(result, programmer)
    out = Path(result.out)
    if programmer.script is not None:
        name, text = programmer.script
        (out / name).write_text(text)
    argv = [executable, *programmer.args, bitstream.name]
    log_name = f"program_{programmer.tool.lower()}.log"
    try:
        run_step(f"{programmer.tool} (programming the {board.name})", argv, out, log_name=log_name,
                 env=dict(os.environ if environ is None else environ), timeout=timeout)
    except BuildError as error:
        raise BuildError(f"{error} - is the {board.name} connected, powered and not in use by "
                         f"another program?") from None
    return out / log_name
