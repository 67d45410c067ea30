"""Check types by name: the built-ins, imported only when configured (the
libraries behind some of them cost tens of MiB), plus plugins registered as
entry points in the ``sentinel.checks`` group."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from checks.base import Check

ENTRY_POINT_GROUP = "sentinel.checks"

_BUILTINS = {
    "http": "checks.http:HttpCheck",
    "mysql": "checks.mysql:MysqlCheck",
    "queue": "checks.queue:QueueCheck",
    "system": "checks.system:SystemCheck",
    "systemd": "checks.systemd:SystemdCheck",
    "log": "checks.log:LogCheck",
    "command": "checks.command:CommandCheck",
}


class UnknownCheckType(LookupError):
    pass


def available_types() -> list[str]:
    plugins = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(set(_BUILTINS) | plugins)


def load_check_class(type_name: str) -> type[Check]:
    """The class for a type name; raises UnknownCheckType naming the choices."""
    target = _BUILTINS.get(type_name)
    if target is not None:
        module_name, _, attr = target.partition(":")
        cls = getattr(importlib.import_module(module_name), attr)
    else:
        matches = [
            ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == type_name
        ]
        if not matches:
            choices = ", ".join(available_types())
            raise UnknownCheckType(
                f'"{type_name}" is not a check type; use one of {choices}'
            )
        try:
            cls = matches[0].load()
        except Exception as exc:
            raise UnknownCheckType(
                f'plugin "{type_name}" ({matches[0].value}) failed to load: {exc}'
            ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Check)):
        raise UnknownCheckType(f'"{type_name}" does not name a Check subclass')
    return cls
