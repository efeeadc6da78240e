"""Import every module under formers.nn, and every domain package, so that all registered parts
are in the registry before the conformance tests are collected (a part added later is picked up
without editing the tests)."""

import importlib
import pkgutil

import formers.nn

for _m in pkgutil.walk_packages(formers.nn.__path__, "formers.nn."):
    importlib.import_module(_m.name)

from formers.cli import _load_all  # noqa: E402  (the domains: forecasters, surrogates, ...)

_load_all()
