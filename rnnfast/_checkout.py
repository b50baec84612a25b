"""A source checkout's own kernels: ``rnnfast.kernels`` imported from the ``kernels/``
beside a checkout's ``rnnfast/`` (this repository's layout; ``setup.py`` maps the package
there on install).

Why: with another checkout installed in editable mode, Python imports ``rnnfast`` from
the current directory (``python -m bench`` run in a clone) but, finding no
``rnnfast/kernels`` there, fell through to setuptools' editable finder, which maps the
name to the installed checkout's ``kernels/``: the run timed and tested that checkout's
kernels under this one's modules, without a word. Installed from a wheel (or with a
``rnnfast/kernels`` link) the kernels sit inside the package and nothing changes.

Imports nothing from rnnfast: ``bench.solo`` loads this file by path to point an older
checkout (whose ``rnnfast`` predates it) at its own kernels.
"""

import importlib.util
import os
import sys


class _CheckoutKernels:
    """A meta-path finder for the one name ``rnnfast.kernels`` (its subpackages then
    follow its ``__path__``)."""

    def __init__(self, init):
        self.init = init

    def find_spec(self, name, path=None, target=None):
        if name != "rnnfast.kernels":
            return None
        return importlib.util.spec_from_file_location(
            name, self.init, submodule_search_locations=[os.path.dirname(self.init)])


def use_own_kernels(root):
    """Make ``rnnfast.kernels`` import from ``root``/kernels in this process, ahead of
    every other finder, where ``root``/rnnfast has no kernels of its own and
    ``root``/kernels exists. Returns whether the checkout's kernels are the ones used."""
    init = os.path.join(root, "kernels", "__init__.py")
    if os.path.exists(os.path.join(root, "rnnfast", "kernels")) or not os.path.isfile(init):
        return False
    if not any(type(f).__name__ == "_CheckoutKernels" and f.init == init
               for f in sys.meta_path):
        sys.meta_path.insert(0, _CheckoutKernels(init))
    return True
