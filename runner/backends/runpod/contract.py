"""RunPod's REST API v2 contract: its OpenAPI 3.1 document (openapi-v2.json beside this file) as validators.

The fake RunPod checks every request it receives and every response it sends here, so a test fails as soon
as pgolf sends something RunPod would refuse or the fake answers something RunPod never would. JSON Schema
2020-12 (`allOf`, `unevaluatedProperties`, `if/then`) is checked by jsonschema's Draft 2020-12 validator; a
`referencing` registry built from the whole document resolves every `$ref`, so a fragment is validated with
all the schemas it points to. `date-time` formats are checked (rfc3339-validator).

Parameters are checked as OpenAPI serialises them: query arrays are `style: form, explode: false`
(comma-separated), integers and booleans arrive as text. A query parameter the operation does not declare is
refused too: RunPod may ignore it, but in pgolf it is always a typo.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SCHEMA_PATH = Path(__file__).with_name("openapi-v2.json")
BASE_URI = "urn:runpod:openapi-v2"
METHODS = ("get", "post", "put", "patch", "delete")


@dataclass(frozen=True)
class Operation:
    """One method on one path template of the document."""
    method: str
    template: str
    spec: dict
    path_item: dict

    @property
    def id(self) -> str:
        return self.spec.get("operationId", f"{self.method} {self.template}")

    @cached_property
    def parameters(self) -> dict[tuple[str, str], dict]:
        """(location, name) -> parameter object, path-level ones overridden by the operation's."""
        out: dict[tuple[str, str], dict] = {}
        for p in list(self.path_item.get("parameters") or []) + list(self.spec.get("parameters") or []):
            p = contract().resolve(p)
            out[(p["in"], p["name"].lower() if p["in"] == "header" else p["name"])] = p
        return out


class Contract:
    """The document, its registry, and lookups by path and by `$ref`."""

    def __init__(self, path: Path = SCHEMA_PATH):
        self.doc = json.loads(path.read_text())
        self.registry = Registry().with_resource(BASE_URI, Resource(self.doc, specification=DRAFT202012))
        self._routes: list[tuple[re.Pattern, str]] = []
        for template in self.doc["paths"]:
            rx = re.escape(template)
            rx = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", rx)
            self._routes.append((re.compile(f"^{rx}$"), template))
        # literal segments win over parameters (/v2/registries/delegations before /v2/registries/{id})
        self._routes.sort(key=lambda r: r[1].count("{"))

    def resolve(self, obj: dict) -> dict:
        """Follow a local `$ref` (#/components/...) to the object it names."""
        while isinstance(obj, dict) and "$ref" in obj:
            node: Any = self.doc
            for part in obj["$ref"].lstrip("#/").split("/"):
                node = node[part]
            obj = node
        return obj

    def match(self, method: str, path: str) -> tuple[Operation | None, dict[str, str], bool]:
        """(operation, path parameters, path known). A known path without this method gives (None, {}, True)."""
        for rx, template in self._routes:
            m = rx.match(path)
            if m:
                item = self.doc["paths"][template]
                spec = item.get(method.lower())
                if spec is None:
                    return None, {}, True
                return Operation(method.lower(), template, spec, item), m.groupdict(), True
        return None, {}, False

    def validator(self, schema: dict) -> Draft202012Validator:
        """A validator for a schema fragment of the document (its `$ref`s resolve in the registry)."""
        return _validator(json.dumps(schema, sort_keys=True))

    def component(self, name: str) -> dict:
        return {"$ref": f"{BASE_URI}#/components/schemas/{name}"}

    def errors(self, schema: dict, instance: Any, where: str) -> list[str]:
        """Every violation of `schema` by `instance`, as RunPod words them ("$.gpu.count: ...")."""
        out = []
        for e in sorted(self.validator(schema).iter_errors(instance), key=lambda e: list(e.absolute_path)):
            loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path)
            out.append(f"{where}{loc}: {e.message}")
        return out

    # ---- requests
    def request_errors(self, op: Operation, query: dict[str, list[str]], headers: dict[str, str],
                       body: bytes | None, content_type: str) -> list[str]:
        """Violations of the operation's parameters and request body (empty list: RunPod would accept it)."""
        errs: list[str] = []
        for name in query:
            if ("query", name) not in op.parameters:
                errs.append(f"query.{name}: not a parameter of {op.id}")
        for (where, name), p in op.parameters.items():
            if where == "path":
                continue
            raw = query.get(name) if where == "query" else headers.get(name)
            if raw is None:
                if p.get("required"):
                    errs.append(f"{where}.{name}: required")
                continue
            if where == "query" and len(raw) > 1:
                errs.append(f"query.{name}: given {len(raw)} times")
            value = raw[-1] if isinstance(raw, list) else raw
            errs += self.errors(self._rewrite(p["schema"]), _decode_param(value, self.resolve(p["schema"]), p),
                                f"{where}.{name}")
        rb = op.spec.get("requestBody")
        if rb is None:
            if body:
                errs.append(f"$: {op.id} takes no request body")
            return errs
        if not body:
            return errs + (["$: request body required"] if rb.get("required") else [])
        if "application/json" not in content_type:
            return errs + [f"$: Content-Type {content_type!r}, expected application/json"]
        try:
            instance = json.loads(body)
        except ValueError as e:
            return errs + [f"$: not JSON ({e})"]
        schema = rb["content"]["application/json"]["schema"]
        return errs + self.errors(self._rewrite(schema), instance, "$")

    # ---- responses
    def response_errors(self, op: Operation, status: int, headers: dict[str, str], body: bytes | None) -> list[str]:
        """Violations of the documented response for this status (or `default`): content type, body, headers."""
        responses = op.spec.get("responses") or {}
        spec = responses.get(str(status)) or responses.get(f"{str(status)[0]}XX") or responses.get("default")
        if spec is None:
            return [f"{op.id}: status {status} is not documented"]
        spec = self.resolve(spec)
        errs: list[str] = []
        for name, h in (spec.get("headers") or {}).items():
            value = _header(headers, name)
            h = self.resolve(h)
            if value is None:
                if h.get("required"):
                    errs.append(f"header {name}: required")
                continue
            errs += self.errors(self._rewrite(h["schema"]), _decode_param(value, self.resolve(h["schema"]), {}),
                                f"header {name}")
        content = spec.get("content") or {}
        if not content:
            return errs + ([f"{op.id} {status}: must have no body"] if body else [])
        ctype = (_header(headers, "Content-Type") or "").split(";")[0].strip()
        if ctype not in content:
            return errs + [f"{op.id} {status}: Content-Type {ctype!r}, documented {sorted(content)}"]
        schema = content[ctype].get("schema") or {}
        if ctype == "text/event-stream":
            return errs             # the stream's events are checked one by one (event_errors)
        try:
            instance = json.loads(body or b"")
        except ValueError as e:
            return errs + [f"{op.id} {status}: body is not JSON ({e})"]
        return errs + self.errors(self._rewrite(schema), instance, "response")

    def event_errors(self, event_id: str, data: str) -> list[str]:
        """One pod-log SSE event: `data` is {"source", "line", "ts"} (source a LogSource) and `id` is its ts."""
        try:
            payload = json.loads(data)
        except ValueError as e:
            return [f"event data is not JSON ({e})"]
        schema = {"type": "object", "required": ["source", "line", "ts"], "additionalProperties": False,
                  "properties": {"source": self.component("LogSource"), "line": {"type": "string"},
                                 "ts": {"type": "string", "format": "date-time"}}}
        errs = self.errors(schema, payload, "event")
        if isinstance(payload, dict) and payload.get("ts") != event_id:
            errs.append(f"event id {event_id!r} is not its ts {payload.get('ts')!r}")
        return errs

    def _rewrite(self, schema: dict) -> dict:
        """A fragment whose local `#/...` refs point into the registered document."""
        return json.loads(json.dumps(schema).replace('"$ref": "#/', f'"$ref": "{BASE_URI}#/'))


def _header(headers: dict[str, str], name: str) -> str | None:
    low = name.lower()
    return next((v for k, v in headers.items() if k.lower() == low), None)


def _decode_param(value: str, schema: dict, param: dict) -> Any:
    """Text of a query/header value -> the JSON value its schema describes (form style, explode=false)."""
    kind = schema.get("type")
    if kind == "array":
        item = schema.get("items") or {}
        return [_decode_param(v, item, {}) for v in value.split(",")] if value != "" else []
    if kind == "integer":
        return int(value) if re.fullmatch(r"-?\d+", value) else value
    if kind == "number":
        try:
            return float(value)
        except ValueError:
            return value
    if kind == "boolean":
        return {"true": True, "false": False}.get(value, value)
    return value


@lru_cache(maxsize=None)
def contract() -> Contract:
    return Contract()


@lru_cache(maxsize=512)
def _validator(schema_text: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads(schema_text), registry=contract().registry,
                                format_checker=Draft202012Validator.FORMAT_CHECKER)
