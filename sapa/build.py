"""``python -m sapa.build``: build (or find) the C++ CPU kernel now, not on the first forward.

Prints one line: where the kernel is cached and how long it took, or why it could not be built
(then ``backend="auto"`` uses the pure PyTorch backend: slower, same results). Exit status 0
when the kernel is ready, 1 otherwise. ``make venv`` runs it.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from typing import Optional, Sequence

__all__ = ["main"]


def _one_line_error(message: str) -> None:
    print(f"python -m sapa.build: {message} (it takes no arguments)", file=sys.stderr)
    sys.exit(2)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Build the extension; one line on stdout (success) or stderr (failure); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m sapa.build", description=__doc__.splitlines()[0])
    parser.error = _one_line_error
    parser.parse_args(argv)
    from .backends import cpp

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the failure is said below, once
        ext = cpp.load_extension()
    if ext is None:
        print(f"sapa.build: the C++ CPU kernel was not built: {cpp.build_error()}; CPU tensors will use "
              "the pure PyTorch backend 'torch' (slower, same results)", file=sys.stderr)
        return 1
    print(f"sapa.build: the C++ CPU kernel is ready ({time.perf_counter() - start:.1f} s), cached in "
          f"{cpp.build_directory()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
