"""The PSP streaming SDK's public import path; the code lives in ``clients.psp`` (see its docstring)."""

from clients.psp import *  # noqa: F403  (the public names, listed in clients.psp.__all__)
from clients.psp import __all__ as __all__
