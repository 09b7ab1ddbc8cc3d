"""pytest plugin (loaded by ``-p`` from pyproject's addopts): collect the repository root as a
plain directory, not as a Python package.

The root is the ``accelc`` package (``package-dir = {"accelc" = "."}``) and its ``__init__.py``
uses relative imports. pytest would import it as a package named after the checkout folder,
which fails outright when that name is not an identifier (``accelc-main``, ``tmp.x1y2``). The
tests import the installed ``accelc`` instead. A root ``conftest.py`` cannot do this: pytest
asks the hooks of the root's *parent* folder how to collect the root.
"""

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_collect_directory(path, parent):
    if path == parent.config.rootpath and (path / "__init__.py").is_file():
        return pytest.Dir.from_parent(parent, path=path)
    return None
