"""Settings from three places, one precedence: defaults < a TOML `--config` file < command-line flags.

finetune and distill both build their settings dataclasses here (mlx-lm `lora.py` habit): parser defaults are
None so the file can fill what the command line left out. Torch-free.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import tomllib

from llmkit.errors import NotFoundError, UsageError


def load_config(path: Path | str | None) -> dict[str, Any]:
    """A TOML config as a flat dict with `-` in keys turned into `_` (so `learning-rate` = `learning_rate`).

    Tables are flattened one level (`[training] epochs = 2` -> `epochs`), so a file may group its keys.

    Raises:
        NotFoundError: no such file. UsageError: not valid TOML.
    """
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"config file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid TOML ({exc})") from None
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            flat.update({k.replace("-", "_"): v for k, v in value.items()})
        else:
            flat[key.replace("-", "_")] = value
    return flat


def check_config_keys(config: dict[str, Any], known: set[str], path: Path | str | None) -> None:
    """Reject keys no command knows (a typo would otherwise be silently ignored)."""
    unknown = sorted(set(config) - known)
    if unknown:
        raise UsageError(
            f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )


def settings_from(cls: Any, config: dict[str, Any], cli: dict[str, Any]) -> Any:
    """Build dataclass `cls` from defaults < `config` (TOML) < `cli` (values that are not None)."""
    names = {f.name for f in fields(cls)}
    values = {k: v for k, v in config.items() if k in names}
    values.update({k: v for k, v in cli.items() if k in names and v is not None})
    try:
        instance = cls(**values)
    except TypeError as exc:
        raise UsageError(f"bad settings: {exc}") from None
    return instance.validate() if hasattr(instance, "validate") else instance
