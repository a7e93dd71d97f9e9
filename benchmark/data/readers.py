"""Imports every built-in reader module so that their ``@register_reader`` decorators run."""

import importlib
import pkgutil

import benchmark.data as _pkg

for _info in pkgutil.iter_modules(_pkg.__path__):
    if _info.name not in {"base", "readers"} and not _info.name.startswith("_"):
        importlib.import_module(f"benchmark.data.{_info.name}")
