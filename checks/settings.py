"""Reading one configuration table with every problem collected, not just the first.

Each package owns the schema of its own section: it walks its table with a
`Section`, which records a `Problem` for each bad value (naming the key path,
the value and what was expected) and hands back a usable default so the walk
can go on. The daemon's loader turns the key paths into file and line numbers.
"""

from __future__ import annotations

import builtins
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True, slots=True)
class Problem:
    key: str
    """Dotted key path, e.g. ``checks.api.interval``."""
    message: str
    warning: bool = False
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = self.file or "<config>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        prefix = "warning: " if self.warning else ""
        return f"{where}: {prefix}{self.key}: {self.message}"


class ConfigError(Exception):
    """The configuration cannot be used; `problems` lists every reason."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class Problems:
    """Collects errors and warnings while a configuration is walked."""

    def __init__(self) -> None:
        self.items: list[Problem] = []

    def error(self, key: str, message: str) -> None:
        self.items.append(Problem(key, message))

    def warn(self, key: str, message: str) -> None:
        self.items.append(Problem(key, message, warning=True))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.items if not p.warning]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.items if p.warning]

    def raise_if_errors(self) -> None:
        if self.errors:
            raise ConfigError(self.items)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``"500ms"``, ``"30s"``, ``"1h30m"``."""
    stripped = text.strip()
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(stripped):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(stripped):
        raise ValueError(f'"{text}" is not a duration; use e.g. "30s"')
    return total


def format_duration(seconds: float) -> str:
    """The shortest readable form: ``"1h5m"``, ``"30s"``, ``"250ms"``."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts)


class SecretUnavailable(Exception):
    """A secret's file or environment variable could not be read at use time."""


class Secret:
    """A password, token or key. Its repr and str never show the value."""

    __slots__ = ("_file", "_value", "source")

    def __init__(
        self, value: str | None = None, *, file: Path | None = None, source: str = ""
    ) -> None:
        if (value is None) == (file is None):
            raise ValueError("a secret has either a value or a file")
        self._value = value
        self._file = file
        self.source = source

    def reveal(self) -> str:
        """The value; a file is read on each call so a rotated credential is
        picked up, and a missing one surfaces where it is used."""
        if self._value is not None:
            return self._value
        assert self._file is not None
        try:
            return self._file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise SecretUnavailable(
                f"cannot read {self.source or 'secret file'} {self._file}: {reason}"
            ) from None

    def __repr__(self) -> str:
        return f"Secret({self.source or 'inline'}, ***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return (self._value, self._file) == (other._value, other._file)

    def __hash__(self) -> int:
        return hash((self._value, self._file))


_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


class Section:
    """One TOML table being read: typed getters that record problems.

    Every getter marks its key as known; `finish()` reports the keys nobody
    asked for, because a typo must not silently disable a check.
    """

    def __init__(
        self,
        data: Mapping[builtins.str, Any],
        path: builtins.str,
        problems: Problems,
        *,
        env: Mapping[builtins.str, builtins.str] | None = None,
        base_dir: Path | None = None,
    ) -> None:
        self.data = data
        self.path = path
        self.problems = problems
        self.env = os.environ if env is None else env
        self.base_dir = base_dir or Path.cwd()
        self._seen: set[builtins.str] = set()

    def key(self, name: builtins.str) -> builtins.str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: builtins.str, message: builtins.str) -> None:
        self.problems.error(self.key(name), message)

    def warn(self, name: builtins.str, message: builtins.str) -> None:
        self.problems.warn(self.key(name), message)

    def has(self, name: builtins.str) -> builtins.bool:
        return name in self.data

    def raw(self, name: builtins.str, default: Any = None) -> Any:
        self._seen.add(name)
        return self.data.get(name, default)

    def _get(
        self,
        name: builtins.str,
        default: Any,
        kind: type | tuple[type, ...],
        what: builtins.str,
    ) -> Any:
        self._seen.add(name)
        if name not in self.data:
            if default is REQUIRED:
                self.error(name, f"is required ({what})")
                return None
            return default
        value = self.data[name]
        # bool is an int in Python; a TOML `true` is never a number here.
        if isinstance(value, bool) and bool not in _as_tuple(kind):
            self.error(name, f"{_show(value)} is not {what}")
            return None if default is REQUIRED else default
        if not isinstance(value, kind):
            self.error(name, f"{_show(value)} is not {what}")
            return None if default is REQUIRED else default
        return value

    def str(
        self,
        name: builtins.str,
        default: Any = REQUIRED,
        *,
        nonempty: builtins.bool = True,
    ) -> Any:
        value = self._get(name, default, str, "a string")
        if nonempty and isinstance(value, str) and name in self.data and not value:
            self.error(name, "must not be empty")
        return value

    def bool(self, name: builtins.str, default: Any = REQUIRED) -> Any:
        return self._get(name, default, bool, "true or false")

    def int(
        self,
        name: builtins.str,
        default: Any = REQUIRED,
        *,
        min: builtins.int | None = None,
        max: builtins.int | None = None,
    ) -> Any:
        value = self._get(name, default, int, "a whole number")
        if isinstance(value, int) and name in self.data:
            self._check_range(name, value, min, max)
        return value

    def float(
        self,
        name: builtins.str,
        default: Any = REQUIRED,
        *,
        min: builtins.float | None = None,
        max: builtins.float | None = None,
    ) -> Any:
        value = self._get(name, default, (int, float), "a number")
        if isinstance(value, int | builtins.float) and name in self.data:
            self._check_range(name, value, min, max)
            return float(value)
        return value

    def _check_range(
        self,
        name: builtins.str,
        value: builtins.float,
        low: builtins.float | None,
        high: builtins.float | None,
    ) -> None:
        if low is not None and value < low:
            self.error(name, f"{value} is below the minimum {low}")
        if high is not None and value > high:
            self.error(name, f"{value} is above the maximum {high}")

    def duration(
        self,
        name: builtins.str,
        default: Any = REQUIRED,
        *,
        min_s: builtins.float | None = None,
        max_s: builtins.float | None = None,
    ) -> Any:
        """Seconds, from a string such as ``"30s"``; `default` is in seconds."""
        self._seen.add(name)
        if name not in self.data:
            if default is REQUIRED:
                self.error(name, 'is required (a duration such as "30s")')
                return None
            return default
        value = self.data[name]
        if not isinstance(value, str):
            self.error(
                name, f'{_show(value)} is not a duration; use a string, e.g. "30s"'
            )
            return None if default is REQUIRED else default
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.error(name, str(exc))
            return None if default is REQUIRED else default
        if min_s is not None and seconds < min_s:
            self.error(
                name, f'"{value}" is shorter than the minimum {format_duration(min_s)}'
            )
        if max_s is not None and seconds > max_s:
            self.error(
                name, f'"{value}" is longer than the maximum {format_duration(max_s)}'
            )
        return seconds

    def choice(
        self,
        name: builtins.str,
        choices: tuple[builtins.str, ...],
        default: Any = REQUIRED,
    ) -> Any:
        value = self._get(name, default, str, f"one of {', '.join(choices)}")
        if isinstance(value, str) and value not in choices:
            self.error(name, f"{_show(value)} is not one of {', '.join(choices)}")
            return None if default is REQUIRED else default
        return value

    def str_list(self, name: builtins.str, default: Any = REQUIRED) -> Any:
        value = self._get(name, default, list, "a list of strings")
        if isinstance(value, list):
            bad = [v for v in value if not isinstance(v, str)]
            if bad:
                self.error(name, f"{_show(bad[0])} is not a string")
                return [v for v in value if isinstance(v, str)]
        return value

    def float_list(self, name: builtins.str, default: Any = REQUIRED) -> Any:
        value = self._get(name, default, list, "a list of numbers")
        if isinstance(value, list):
            good = [
                float(v)
                for v in value
                if isinstance(v, int | builtins.float) and not isinstance(v, bool)
            ]
            if len(good) != len(value):
                self.error(name, "every item must be a number")
            return good
        return value

    def secret(
        self, name: builtins.str, *, required: builtins.bool = False
    ) -> Secret | None:
        """A secret given inline, as ``"${ENV_VAR}"``, or as ``<name>_file``."""
        file_key = f"{name}_file"
        self._seen.update((name, file_key))
        inline, path = self.data.get(name), self.data.get(file_key)
        if inline is not None and path is not None:
            self.error(name, f"give either {name} or {file_key}, not both")
            return None
        if inline is None and path is None:
            if required:
                self.error(
                    name, f"is required (inline, as ${{ENV_VAR}}, or as {file_key})"
                )
            return None
        if path is not None:
            if not isinstance(path, str) or not path:
                self.error(file_key, f"{_show(path)} is not a file path")
                return None
            file = Path(os.path.expandvars(path))
            if not file.is_absolute():
                file = self.base_dir / file
            if not os.access(file, os.R_OK):
                # A warning, not an error: the file may appear (systemd
                # credentials); the probe reports it as unknown meanwhile.
                self.warn(file_key, f"{file} is not readable now")
            return Secret(file=file, source=self.key(file_key))
        if not isinstance(inline, str):
            self.error(name, f"{_show(inline)} is not a string")
            return None
        ref = _ENV_REF.match(inline)
        if ref:
            var = ref.group(1)
            if var not in self.env:
                self.error(name, f"environment variable {var} is not set")
                return None
            return Secret(self.env[var], source=f"${{{var}}}")
        return Secret(inline, source=self.key(name))

    def section(
        self, name: builtins.str, *, required: builtins.bool = False
    ) -> Section:
        """A sub-table; an absent one reads as empty."""
        value = self._get(name, REQUIRED if required else {}, dict, "a table")
        return Section(
            value if isinstance(value, dict) else {},
            self.key(name),
            self.problems,
            env=self.env,
            base_dir=self.base_dir,
        )

    def tables(self, name: builtins.str) -> dict[builtins.str, Section]:
        """A table of named tables, such as ``[checks.api]``, ``[checks.db]``."""
        outer = self.section(name)
        result: dict[builtins.str, Section] = {}
        for child in outer.data:
            result[child] = outer.section(child)
        return result

    def table_list(self, name: builtins.str) -> list[Section]:
        """An array of tables, such as ``[[escalation.policies.p1.steps]]``."""
        value = self._get(name, [], list, "a list of tables")
        result = []
        for index, item in enumerate(value or []):
            key = f"{self.key(name)}[{index}]"
            if not isinstance(item, dict):
                self.problems.error(key, f"{_show(item)} is not a table")
                continue
            result.append(
                Section(item, key, self.problems, env=self.env, base_dir=self.base_dir)
            )
        return result

    def finish(self) -> None:
        """Report keys no getter asked for."""
        for name in self.data:
            if name not in self._seen:
                self.error(name, "unknown setting (check the spelling)")

    def names(self) -> Iterator[builtins.str]:
        return iter(self.data)


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _show(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)
