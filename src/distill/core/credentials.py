"""API keys from an environment variable or a secret file (e.g. a Docker or Kubernetes secret mount).

Configs and command lines name where a key is (`api_key_env: NAME`, `api_key_file: PATH`), never
the key itself, so a key cannot end up in a saved config, a manifest, a log line or a repr. Errors
name the variable or the file and the fix, never the content.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

from distill.core.errors import ConfigError


def one_source(env: str | None, file: Path | None, env_key: str, file_key: str) -> None:
    """Refuse both a variable and a file: which one wins would be a guess."""
    if env and file is not None:
        raise ConfigError(f"`{env_key}` and `{file_key}` are both set; give the key one way only: "
                          f"remove `{env_key}` to read {file}, or remove `{file_key}` to read ${env}.")


def read_key_file(path: Path, key: str) -> str:
    """The key held in `path`, surrounding whitespace (a trailing newline) stripped.

    Args:
        path: a file holding only the key.
        key: the setting or flag that named the file, for error messages.
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"`{key}`: {path} does not exist; write the key into it (the key only), "
                          f"or point {key} at the file that holds it.") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(f"`{key}`: cannot read {path} ({reason}); it must be a UTF-8 text file this "
                          "user can read, holding only the key.") from None
    secret = text.strip()
    if not secret:
        raise ConfigError(f"`{key}`: {path} is empty; write the key into it (the key only, e.g. "
                          f"`printf %s \"$KEY\" > {path}`).")
    return secret


def open_key_file(path: Path, key: str) -> str:
    """`read_key_file`, warning first (as ssh does) when other users may read the file."""
    warn_if_readable_by_others(Path(path).expanduser(), key)
    return read_key_file(path, key)


def warn_if_readable_by_others(path: Path, key: str) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # read_key_file reports a missing or unreadable file
    if os.name != "nt" and mode & (stat.S_IRGRP | stat.S_IROTH):
        warnings.warn(f"`{key}`: the key file {path} is readable by other users (mode {oct(mode & 0o777)}); "
                      f"restrict it with `chmod 600 {path}` (Kubernetes: defaultMode: 0400).", stacklevel=3)


def env_key(name: str, flag: str) -> str:
    """The key in environment variable `name`; an unset or empty variable is an error."""
    value = os.environ.get(name, "").strip()
    if not value:
        raise ConfigError(f"{flag} {name}: the environment variable {name} is not set; "
                          f"export {name}=... first, or leave out {flag}.")
    return value
