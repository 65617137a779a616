"""Builds the effective configuration from defaults, a TOML file, the environment and `--set`.

Precedence is defaults < file < environment (`WORKER__SECTION__KEY`) < `--set
section.key=value`. Values from the environment and `--set` are read as TOML
values when they parse as one (`10`, `true`, `["a", "b"]`) and as plain
strings otherwise, so `--set handler.target=pkg.mod:fn` needs no quotes.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from worker.config import SOURCE_MODELS, WorkerConfig

ENV_PREFIX = "WORKER__"


class ConfigError(Exception):
    """Invalid configuration; `problems` holds one human-readable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def parse_scalar(text: str) -> Any:
    """Read `text` as a TOML value, falling back to the string itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _put(tree: dict[str, Any], dotted: str, value: Any, origin: str) -> None:
    parts = [p for p in dotted.split(".") if p]
    if len(parts) != 2:
        raise ConfigError(
            [f"{origin}: '{dotted}' must name section.key, for example batching.batch_size"]
        )
    section = tree.setdefault(parts[0], {})
    if not isinstance(section, dict):
        raise ConfigError([f"{origin}: '{parts[0]}' is not a section"])
    section[parts[1]] = value


def read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([f"config file {path}: not found"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"config file {path}: not valid TOML: {exc}"]) from None


def load_config(
    path: Path | None = None,
    overrides: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
) -> WorkerConfig:
    """Return the validated configuration or raise ConfigError listing every problem."""
    tree: dict[str, Any] = read_file(path) if path else {}
    for name, raw in sorted((environ or {}).items()):
        if name.startswith(ENV_PREFIX):
            dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
            _put(tree, dotted, _scalar(dotted, raw), f"environment {name}")
    for item in overrides:
        dotted, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError([f"--set {item}: expected section.key=value"])
        _put(tree, dotted.strip(), _scalar(dotted.strip(), raw.strip()), f"--set {item}")
    try:
        config = WorkerConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, tree)) from None
    if not config.source.standalone:
        raise ConfigError(
            [
                f"source.kind = {config.source.kind!r}: only for workers built in a test "
                "(worker.testing); a daemon reads 'kafka', 'kinesis' or 'dynamodb'"
            ]
        )
    return config


def _lookup(tree: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        if (isinstance(tree, dict) and part in tree) or (
            isinstance(tree, list | tuple) and isinstance(part, int) and part < len(tree)
        ):
            tree = tree[part]
        else:
            return None
    return tree


def _model_at(loc: tuple[Any, ...], tree: dict[str, Any]) -> Any:
    """The model of the section at `loc`; `[source]` by its kind, as the union picks it."""
    if loc[:1] == ("source",):
        source = tree.get("source")
        kind = source.get("kind", "kafka") if isinstance(source, dict) else "kafka"
        model: Any = SOURCE_MODELS.get(kind)
        loc = loc[1:]
    else:
        model = WorkerConfig
    for part in loc:
        field = model.model_fields.get(part) if model is not None else None
        if field is None or not isinstance(field.annotation, type):
            return None
        model = field.annotation
    return model


def _allowed_keys(loc: tuple[Any, ...], tree: dict[str, Any]) -> list[str]:
    model = _model_at(loc[:-1], tree)
    return sorted(model.model_fields) if model is not None else []


def _range(loc: tuple[Any, ...], tree: dict[str, Any]) -> str:
    """The field's numeric range as 'allowed: LOW..HIGH', from its constraints."""
    model = _model_at(loc[:-1], tree)
    field = model.model_fields.get(loc[-1]) if model is not None and loc else None
    if field is None:
        return ""
    low = high = None
    for meta in field.metadata:
        low = getattr(meta, "ge", None) if getattr(meta, "ge", None) is not None else low
        high = getattr(meta, "le", None) if getattr(meta, "le", None) is not None else high
    if low is None and high is None:
        return ""
    return f" (allowed: {'' if low is None else low}..{'' if high is None else high})"


def describe_errors(exc: ValidationError, tree: dict[str, Any]) -> list[str]:
    """One line per problem: the key, the value given, and what is allowed."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = _user_loc(err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        value = _shown(key, _lookup(tree, loc))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "union_tag_invalid":
            kinds = ", ".join(repr(k) for k, m in SOURCE_MODELS.items() if m.standalone)
            lines.append(f"{key}.kind = {_lookup(tree, (*loc, 'kind'))!r}: must be one of {kinds}")
        elif err["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(loc, tree)) or "none"
            lines.append(f"{key} = {value}: unknown key (allowed here: {allowed})")
        elif err["type"] == "missing":
            lines.append(f"{key}: required")
        elif not loc or msg.startswith((f"{key}:", f"{key}.")):  # the message names its key
            lines.extend(msg.split("\n"))  # a validator that found several: one line each
        else:
            bound = err["type"] in ("greater_than_equal", "less_than_equal", "greater_than")
            lines.append(f"{key} = {value}: {msg}{_range(loc, tree) if bound else ''}")
    return lines


#: A key naming any of these holds a secret (or, misspelt, may): its value is never shown.
_SECRET_WORDS = ("password", "passwd", "pasw", "pwd", "secret", "token", "credential")


def _secret(key: str) -> bool:
    name = key.rpartition(".")[2].lower()
    return any(word in name for word in _SECRET_WORDS) and not name.endswith("_provider")


def _scalar(key: str, raw: str) -> Any:
    """An override's value: a secret's is its text as given (an all-digit password is a
    password, not a number); anything else is read as a TOML value."""
    return raw if _secret(key) else parse_scalar(raw)


def _shown(key: str, value: Any) -> str:
    """The value as an error line shows it: `***` for a secret's, whatever its type (an
    all-digit password read from the environment or --set arrives as a number and used to
    be echoed in the line that refused it)."""
    return "***" if _secret(key) else repr(value)


def _user_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """The key path as the user wrote it: without validator names and the union's kind tag."""
    parts = tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))
    if parts[:1] == ("source",) and len(parts) > 1 and parts[1] in SOURCE_MODELS:
        parts = parts[:1] + parts[2:]
    return parts
