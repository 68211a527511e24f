"""Forward compatibility: drop the fields of a received payload that this version of the models does not know.

Design. The models stay strict (``extra="forbid"``): an object our own code builds with a misspelt keyword, or
validates directly with ``model_validate``, still fails loudly. Only :func:`dangol_protocol.parse_payload` — the
one path by which a message *received* over MQTT becomes a model — is lenient, the way protobuf and JSON-schema
readers are: before validation it removes, with :func:`strip_unknown`, every key the target model has no field
(or alias) for, at the top level and inside nested models (a catalogue's items, a menu's picks and day-part
picks, a status's health, an enrolment's consent), and reports the dropped names. What is left is validated
exactly as before, so every known field keeps its checks (types, bounds, lengths, the ``schema`` string), and a
dropped field is never validated, stored, dumped or echoed. A change that an older reader must not accept —
a field that changes meaning or is removed, a new value of an enumerated field (``camera``, a day-part, an
event ``kind``) — is still refused by it, and is made by bumping the schema version (``catalogue/2``).

The walk follows the model's own field annotations (``list[X]``, ``dict[K, X]``, ``X | None``, a discriminated
union picked by its discriminator value), never the payload's shape, so it visits each received value at most
once: its cost is linear in the payload, which :func:`~dangol_protocol.parse_payload` has already capped in size
and nesting before decoding. A union of several models without a discriminator is left as it is (strict).
"""

from __future__ import annotations

import re
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

__all__ = ["MAX_NAME_CHARS", "safe_name", "strip_unknown"]

MAX_NAME_CHARS = 40
"""A dropped field's name is reported with at most this many characters (:func:`safe_name`)."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")
_PLANS: dict[type[BaseModel], dict[str, tuple[Any, str | None]]] = {}


def safe_name(key: str) -> str:
    """``key`` as it may appear in a log line: at most :data:`MAX_NAME_CHARS` characters, anything but letters,
    digits, ``_`` and ``-`` replaced by ``?`` (a sender's key can neither forge a log line nor flood one)."""
    return _UNSAFE.sub("?", key[:MAX_NAME_CHARS]) + ("…" if len(key) > MAX_NAME_CHARS else "")


def _has_model(annotation: Any) -> bool:
    """Whether a pydantic model occurs anywhere in ``annotation`` (only then is a value worth walking)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return any(_has_model(arg) for arg in get_args(annotation) if not isinstance(arg, (str, int, FieldInfo)))


def _plan(model: type[BaseModel]) -> dict[str, tuple[Any, str | None]]:
    """``{accepted input key: (annotation to walk into or None, discriminator)}`` of ``model``, cached.

    A field is accepted by its alias, and also by its name when the model validates by name (or has no alias).
    """
    plan = _PLANS.get(model)
    if plan is None:
        config = model.model_config
        by_name = bool(config.get("populate_by_name") or config.get("validate_by_name"))
        plan = {}
        for name, info in model.model_fields.items():
            walk = (info.annotation if _has_model(info.annotation) else None,
                    info.discriminator if isinstance(info.discriminator, str) else None)
            alias = info.validation_alias if isinstance(info.validation_alias, str) else info.alias
            if alias:
                plan[alias] = walk
            if not alias or by_name:
                plan[name] = walk
        _PLANS[model] = plan
    return plan


def _pick(models: list[Any], discriminator: str | None, value: Any) -> Any:
    """The one member of a union to walk ``value`` with, or None (ambiguous: leave the value as it is)."""
    if len(models) == 1:
        return models[0]
    if discriminator is None or not isinstance(value, dict):
        return None
    tag = value.get(discriminator)
    for model in models:
        info = model.model_fields.get(discriminator) if isinstance(model, type) else None
        if info is not None and get_origin(info.annotation) is Literal and tag in get_args(info.annotation):
            return model
    return None


def _walk(annotation: Any, value: Any, path: str, dropped: list[str], discriminator: str | None = None) -> Any:
    """``value`` with the unknown keys of every model in ``annotation`` removed (new containers, input untouched);
    appends each dropped key's path (``items[].allergens``) to ``dropped``."""
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *meta = get_args(annotation)
        found = [m.discriminator for m in meta if isinstance(m, FieldInfo) and isinstance(m.discriminator, str)]
        return _walk(base, value, path, dropped, found[0] if found else discriminator)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _strip_model(annotation, value, path, dropped)
    if origin in (Union, types.UnionType):
        member = _pick([a for a in get_args(annotation) if _has_model(a)], discriminator, value)
        return value if member is None else _walk(member, value, path, dropped, discriminator)
    if origin in (list, tuple, set, frozenset) and isinstance(value, list):
        args = get_args(annotation)
        if not args or not _has_model(args[0]):
            return value
        return [_walk(args[0], item, f"{path}[]", dropped) for item in value]
    if origin is dict and isinstance(value, dict):
        args = get_args(annotation)
        if len(args) != 2 or not _has_model(args[1]):
            return value
        return {key: _walk(args[1], item, f"{path}.*", dropped) for key, item in value.items()}
    return value


def _strip_model(model: type[BaseModel], value: Any, path: str, dropped: list[str]) -> Any:
    if not isinstance(value, dict):
        return value  # not an object: validation refuses it as before
    plan = _plan(model)
    kept: dict[str, Any] = {}
    for key, item in value.items():
        if key not in plan:
            dropped.append(f"{path}.{safe_name(key)}" if path else safe_name(key))
            continue
        inner, discriminator = plan[key]
        prefix = f"{path}.{key}" if path else key
        kept[key] = item if inner is None else _walk(inner, item, prefix, dropped, discriminator)
    return kept


def strip_unknown(annotation: Any, data: Any) -> tuple[Any, list[str]]:
    """Remove from ``data`` (decoded JSON) every key that the model(s) of ``annotation`` would forbid.

    Args:
        annotation: a model class (:class:`~dangol_protocol.Catalogue`) or a type such as the
            discriminated union :data:`~dangol_protocol.Event`.
        data: the decoded payload; not modified.

    Returns:
        ``(cleaned data, dropped)``: the data to validate, and the path of each dropped key in order of
        appearance (``timezone_v2``, ``items[].allergens``, ``dayparts.*[].band``), names made log-safe with
        :func:`safe_name`. A value of the wrong shape (a list where an object belongs) is left for validation to
        refuse.
    """
    dropped: list[str] = []
    return _walk(annotation, data, "", dropped), dropped
