"""The JSON Schemas in ``schemas/``: loading, validation into readable errors, and defaults.

The schemas are the one source of truth for config defaults: ``configs/<type>.json`` equals
``schema_defaults(<type>)`` and roles' ``defaults/main.yml`` are compared against it in tests.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import referencing
import referencing.jsonschema
from jsonschema.exceptions import ValidationError as SchemaError

from llmops_provision.errors import ValidationError, json_path

SERVER_TYPES: tuple[str, ...] = ("web", "api", "lb", "db", "monitoring")


def project_root() -> Path:
    """The repository root (holds schemas/, configs/, roles/); ``$LLMOPS_PROVISION_ROOT`` wins."""
    env = os.environ.get("LLMOPS_PROVISION_ROOT")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent


def schemas_dir() -> Path:
    return project_root() / "schemas"


@cache
def _registry() -> referencing.Registry[Any]:
    resources = []
    for path in sorted(schemas_dir().glob("*.schema.json")):
        contents = json.loads(path.read_text(encoding="utf-8"))
        resources.append(
            (
                contents["$id"],
                referencing.Resource.from_contents(
                    contents, default_specification=referencing.jsonschema.DRAFT202012
                ),
            )
        )
    return referencing.Registry().with_resources(resources)


@cache
def load_schema(name: str) -> dict[str, Any]:
    """``schemas/<name>.schema.json``; name is a server type, ``descriptor`` or ``common``."""
    path = schemas_dir() / f"{name}.schema.json"
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


@cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=_registry())


Locator = Callable[[tuple[str | int, ...]], tuple[str, str]]


def validate_against(
    name: str, instance: Any, locate: Locator | str, prefix: Iterable[str | int] = ()
) -> list[ValidationError]:
    """Validate ``instance`` against schema ``name``; one readable error per problem.

    ``locate`` maps a path inside the instance to (file, path shown to the user); a plain string is
    the file name and the path is shown as is, after ``prefix``.
    """
    if isinstance(locate, str):
        file_name = locate
        base = tuple(prefix)

        def _locate(p: tuple[str | int, ...]) -> tuple[str, str]:
            return file_name, json_path(base + p)

        locator: Locator = _locate
    else:
        locator = locate
    errors: list[ValidationError] = []
    for err in _leaf_errors(_validator(name).iter_errors(instance)):
        errors.extend(_describe(err, locator))
    return sorted(set(errors), key=lambda e: (e.file, e.path, e.problem))


def _leaf_errors(errors: Iterable[SchemaError]) -> Iterable[SchemaError]:
    """Replace if/then, allOf, anyOf wrappers by the concrete errors they contain."""
    for err in errors:
        if err.validator in ("allOf", "if", "then", "else") and err.context:
            yield from _leaf_errors(err.context)
        elif err.validator in ("anyOf", "oneOf") and err.context:
            # Report the alternative that got furthest, the usual reading of the user's intent.
            best = jsonschema.exceptions.best_match(err.context)
            yield from _leaf_errors([best]) if best is not None else [err]
        else:
            yield err


def _custom_message(schema: Any) -> str:
    if isinstance(schema, Mapping):
        return str(schema.get("x-llmops-message", ""))
    return ""


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: Any) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _describe(err: SchemaError, locate: Locator) -> list[ValidationError]:
    path = tuple(err.absolute_path)
    kw = err.validator
    value = err.instance
    schema = err.schema if isinstance(err.schema, Mapping) else {}
    custom = _custom_message(err.schema)
    if "propertyNames" in err.schema_path and isinstance(value, str):
        # A key failed: name the key itself, not the object that holds it.
        return [_error(locate, (*path, value), "key is not allowed here", custom or err.message)]
    if kw == "additionalProperties" and isinstance(value, Mapping):
        known = sorted(schema.get("properties", {}))
        extra = sorted(
            k
            for k in value
            if k not in schema.get("properties", {})
            and not any(re.search(pat, k) for pat in schema.get("patternProperties", {}))
        )
        if isinstance(schema.get("additionalProperties"), Mapping):
            # Values of free-form maps failed: describe via the nested error's own message.
            return [_error(locate, path, err.message, "")]
        return [
            _error(locate, (*path, k), "unknown key", ", ".join(known) if known else "no keys")
            for k in extra
        ] or [_error(locate, path, err.message, "")]
    if kw == "not":
        return [_error(locate, path, custom or "not allowed here", "remove this key")]
    if kw == "required":
        wanted: list[str] = list(err.validator_value)  # type: ignore[arg-type]
        missing = [k for k in wanted if isinstance(value, Mapping) and k not in value]
        return [_error(locate, (*path, k), "required key is missing", "") for k in missing]
    if kw == "type":
        want = err.validator_value
        want_s = " or ".join(want) if isinstance(want, list) else str(want)
        got = _type_name(value)
        article = "an" if got[0] in "aeiou" else "a"
        return [_error(locate, path, f"{_short(value)} is {article} {got}", want_s)]
    if kw == "enum":
        return [
            _error(
                locate,
                path,
                f"{_short(value)} is not one of the choices",
                ", ".join(json.dumps(v) for v in err.validator_value),  # type: ignore[union-attr]
            )
        ]
    if kw == "const":
        return [
            _error(locate, path, f"{_short(value)} is wrong here", json.dumps(err.validator_value))
        ]
    if kw in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        bounds = _bounds(schema)
        return [_error(locate, path, f"{_short(value)} is out of range", bounds)]
    if kw == "pattern":
        return [
            _error(
                locate,
                path,
                f"{_short(value)} is not valid",
                custom or f"pattern {err.validator_value}",
            )
        ]
    if kw == "propertyNames":
        return [_error(locate, path, err.message, custom)]
    if kw in ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties"):
        return [_error(locate, path, f"{kw} is {err.validator_value}", "")]
    if kw == "uniqueItems":
        return [_error(locate, path, "items are repeated", "each item once")]
    return [_error(locate, path, err.message, custom)]


def _bounds(schema: Mapping[str, Any]) -> str:
    low = schema.get("minimum")
    xlow = schema.get("exclusiveMinimum")
    high = schema.get("maximum")
    xhigh = schema.get("exclusiveMaximum")
    parts = []
    if low is not None:
        parts.append(f">= {low}")
    if xlow is not None:
        parts.append(f"> {xlow}")
    if high is not None:
        parts.append(f"<= {high}")
    if xhigh is not None:
        parts.append(f"< {xhigh}")
    return " and ".join(parts)


def _error(
    locate: Locator, path: tuple[str | int, ...], problem: str, allowed: str
) -> ValidationError:
    file_name, shown = locate(path)
    return ValidationError(file_name, shown, problem, allowed)


def _resolve(schema: Mapping[str, Any], doc: str) -> tuple[Mapping[str, Any], str]:
    """Follow ``$ref`` chains (local or to another schema file); siblings overlay the target.

    Returns the resolved schema and the name of the document it lives in (for its own local refs).
    """
    while "$ref" in schema:
        ref = str(schema["$ref"])
        target_file, _, pointer = ref.partition("#")
        if target_file:
            doc = target_file.removesuffix(".schema.json")
        node: Any = load_schema(doc)
        for part in [p for p in pointer.split("/") if p]:
            node = node[part]
        merged = dict(node)
        merged.update({k: v for k, v in schema.items() if k != "$ref"})
        schema = merged
    return schema, doc


_NO_DEFAULT: Any = object()


def defaults_of(schema: Mapping[str, Any], doc: str) -> Any:
    """The default value a (sub)schema describes: its ``default``, else its properties' defaults."""
    schema, doc = _resolve(schema, doc)
    if "default" in schema:
        return copy.deepcopy(schema["default"])
    props = schema.get("properties")
    if isinstance(props, Mapping):
        out = {}
        for key, sub in props.items():
            value = defaults_of(sub, doc)
            if value is not _NO_DEFAULT:
                out[key] = value
        return out if out else _NO_DEFAULT
    return _NO_DEFAULT


def schema_defaults(name: str) -> dict[str, Any]:
    """The complete default config of server type ``name``, read from its schema."""
    value = defaults_of(load_schema(name), name)
    return dict(value) if isinstance(value, Mapping) else {}


def merge_mode(name: str, path: tuple[str, ...]) -> str:
    """``replace`` when the schema marks the object at ``path`` ``x-llmops-merge: replace``."""
    node, doc = _resolve(load_schema(name), name)
    for part in path:
        props = node.get("properties", {})
        if part not in props:
            return "merge"
        node, doc = _resolve(props[part], doc)
    return str(node.get("x-llmops-merge", "merge"))
