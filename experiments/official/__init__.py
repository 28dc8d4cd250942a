"""Checks of our networks against the official implementations, on a checkout the user provides.

Nothing of the official code is part of this project: each check imports the official file from a
local checkout at run time (``--root``), copies the official module's random weights into ours with
``load_state_dict(strict=True)`` and compares the outputs on the same input.

    python -m experiments.official restormer --root ~/src/Restormer
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

__all__ = ["import_official"]


def import_official(
    root: str | Path, relative_path: str, *, stub_modules: tuple[str, ...] = ()
) -> types.ModuleType:
    """Import ``root/relative_path`` as a module, with ``root`` on ``sys.path`` for its own imports.

    ``stub_modules`` names modules the file imports but never uses for the network (``pdb``-style
    debugging imports, ``thop``, ``ptflops``); they are replaced by empty modules when missing.
    """
    root = Path(root).expanduser().resolve()
    file = root / relative_path
    if not file.is_file():
        raise SystemExit(f"{file}: not found; pass --root pointing at a checkout of the official repository")
    for name in stub_modules:
        if name not in sys.modules and importlib.util.find_spec(name) is None:
            sys.modules.setdefault(name, types.ModuleType(name))
    sys.path.insert(0, str(root))
    try:
        spec = importlib.util.spec_from_file_location(f"official_{file.stem}", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(root))
    return module
