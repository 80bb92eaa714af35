"""Translate a pydantic JSON schema into a Kubernetes structural schema.

The API server accepts only a subset of OpenAPI v3 in a CRD: every node has a
``type``, no ``$ref``, no ``anyOf``/``oneOf``/``allOf`` of the kind pydantic
writes for ``Optional[X]``, ``exclusiveMinimum`` is a boolean next to
``minimum``, and ``additionalProperties`` never sits beside ``properties``.
:func:`structural_schema` inlines definitions, turns ``X | None`` into ``X``
(absence, not ``null``, is how an object says "unset"), drops what the API
server does not know, and refuses anything it cannot translate faithfully.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

# Keywords a structural schema node may carry after translation.
_ALLOWED = frozenset(
    {
        "type",
        "format",
        "description",
        "properties",
        "required",
        "items",
        "enum",
        "default",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "pattern",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "additionalProperties",
        "nullable",
        "x-kubernetes-validations",
        "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-map-type",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-int-or-string",
        "x-kubernetes-embedded-resource",
    }
)
# Keywords pydantic writes that carry nothing the API server uses.
_DROPPED = frozenset({"title", "examples", "readOnly", "writeOnly", "deprecated"})
_NULL = {"type": "null"}


class SchemaTranslationError(ValueError):
    """A part of a pydantic schema has no faithful structural equivalent."""


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural schema of ``model`` (as validated, with wire-format field names)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs: dict[str, Any] = raw.pop("$defs", {})
    return _Translator(defs).node(raw, model.__name__)


def clean_description(text: str) -> str:
    """Docstring markup to plain text for ``kubectl explain``: ````x```` becomes ```x```."""
    return " ".join(text.replace("``", "`").split())


def _strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_none(v) for v in value]
    return value


class _Translator:
    def __init__(self, defs: dict[str, Any]) -> None:
        self.defs = defs
        self.stack: list[str] = []

    def node(self, schema: dict[str, Any], where: str) -> dict[str, Any]:
        schema = dict(schema)
        base: dict[str, Any] = {}
        nullable_default = False
        if "$ref" in schema:
            base = self._ref(schema.pop("$ref"), where)
        for junctor in ("anyOf", "oneOf"):
            if junctor in schema:
                branches = [b for b in schema.pop(junctor) if b != _NULL]
                if len(branches) != 1:
                    raise SchemaTranslationError(
                        f"{where}: unions other than Optional[X] have no structural form"
                    )
                base = self.node(branches[0], where)
                nullable_default = True
        if "allOf" in schema:
            parts = schema.pop("allOf")
            if len(parts) != 1:
                raise SchemaTranslationError(f"{where}: allOf with several parts")
            base = self.node(parts[0], where)
        out: dict[str, Any] = dict(base)
        for key, value in schema.items():
            if key in _DROPPED:
                continue
            out[key] = self._keyword(key, value, where)
        if nullable_default and out.get("default", 0) is None:
            del out["default"]
        if "default" in out:
            out["default"] = _strip_none(out["default"])
            if out["default"] is None:
                del out["default"]
        self._fix_bounds(out)
        if "properties" in out:
            out.pop("additionalProperties", None)
            out.setdefault("type", "object")
        if "const" in out:
            out["enum"] = [out.pop("const")]
        if out.pop("uniqueItems", False) and out.get("x-kubernetes-list-type") != "set":
            raise SchemaTranslationError(
                f"{where}: uniqueItems needs x-kubernetes-list-type: set instead"
            )
        if "description" in out:
            out["description"] = clean_description(out["description"])
        unknown = set(out) - _ALLOWED
        if unknown:
            raise SchemaTranslationError(f"{where}: unsupported keywords {sorted(unknown)}")
        if "type" not in out and not out.get("x-kubernetes-int-or-string"):
            raise SchemaTranslationError(f"{where}: no type")
        return out

    def _keyword(self, key: str, value: Any, where: str) -> Any:
        if key == "properties":
            return {name: self.node(sub, f"{where}.{name}") for name, sub in value.items()}
        if key == "items":
            return self.node(value, f"{where}[]")
        if key == "additionalProperties" and isinstance(value, dict):
            return self.node(value, f"{where}{{}}")
        return value

    def _ref(self, ref: str, where: str) -> dict[str, Any]:
        prefix = "#/$defs/"
        if not ref.startswith(prefix):
            raise SchemaTranslationError(f"{where}: unsupported $ref {ref}")
        name = ref[len(prefix) :]
        if name in self.stack:
            raise SchemaTranslationError(f"{where}: recursive type {name} cannot be inlined")
        self.stack.append(name)
        try:
            return self.node(self.defs[name], where)
        finally:
            self.stack.pop()

    @staticmethod
    def _fix_bounds(out: dict[str, Any]) -> None:
        # JSON Schema 2020-12 (pydantic) writes exclusiveMinimum: N; OpenAPI v3.0
        # (Kubernetes) writes minimum: N with exclusiveMinimum: true.
        for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
            value = out.get(exclusive)
            if value is None or isinstance(value, bool):
                continue
            out[bound] = value
            out[exclusive] = True
