"""Conspirator: SmartNIC-aided control plane for ML inference on heterogeneous GPU clusters."""

from pathlib import Path as _Path
from pkgutil import extend_path as _extend_path


def _search_path(path: list[str]) -> list[str]:
    """Where ``conspirator``'s subpackages are looked for.

    The component packages live in their own directories (DESIGN section 2): operator/ is
    ``conspirator.operator``, a namespace portion without ``__init__.py`` so that it never
    shadows the standard library's ``operator``.  Installed, they sit inside this package.
    Where this directory is a source checkout's (an editable install, or ``python -m
    pytest`` in the repository root), two more places are searched: the other
    ``conspirator`` directories on ``sys.path`` (an installed copy), and the repository
    root, which holds operator/.
    """
    root = _Path(__file__).resolve().parent.parent
    if (root / "operator" / "cli.py").is_file() and (root / "pyproject.toml").is_file():
        path.append(str(root))
    return path


__path__ = _search_path(_extend_path(__path__, __name__))
__version__ = "0.1.0"
