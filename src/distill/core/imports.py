"""The user's own code, named in a config as `module:function` and imported explicitly by that name."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from distill.core.errors import ConfigError


def import_function(spec: str, key: str) -> Callable[..., Any]:
    """`spec` ("my_package.my_module:my_function") imported; `key` names the config key in errors."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ConfigError(f"{key}={spec!r} must look like `my_package.my_module:my_function`.")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{key}={spec!r} cannot be imported ({exc}); is the module on PYTHONPATH?") from exc
    if not callable(fn):
        raise ConfigError(f"{key}={spec!r} is not a function.")
    return fn
