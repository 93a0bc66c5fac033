"""What the API server refuses with 422: CRD schema (vendored v1beta1), core schemas, names."""

from __future__ import annotations

import base64
import binascii
import functools
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.support.kube_api.errors import ApiError, Cause, invalid
from tests.support.kube_api.resources import NAMESPACES, SECRETS, SERVICES, Resource

CRD_DIR = Path(__file__).parent / "crds"

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


# --- CRD structural schema → JSON Schema --------------------------------------------------------

_DROPPED = {"description", "format", "default", "nullable"}


def structural_to_json_schema(node: dict[str, Any]) -> dict[str, Any]:
    """Translate an `openAPIV3Schema` node: unknown fields refused unless preserved, int-or-string
    as either, `x-kubernetes-*` and formats dropped (`date-time` is checked separately)."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in _DROPPED:
            continue
        if key == "properties":
            out[key] = {name: structural_to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "not") or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = structural_to_json_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [structural_to_json_schema(sub) for sub in value]
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("format") == "date-time":
        out["format"] = "date-time"
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in node and not preserve and "additionalProperties" not in node:
        out["additionalProperties"] = False
    return out


def apply_defaults(node: dict[str, Any], value: Any) -> None:
    """Fill `default`s of the structural schema into `value` in place (the server defaults)."""
    if isinstance(value, dict):
        for name, sub in node.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = sub["default"]
            if name in value:
                apply_defaults(sub, value[name])
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            for item in value.values():
                apply_defaults(extra, item)
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for item in value:
            apply_defaults(node["items"], item)


def prune_nulls(value: Any) -> Any:
    """Drop `null` fields: the CRD declares none nullable, and the server prunes those."""
    if isinstance(value, dict):
        return {k: prune_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [prune_nulls(v) for v in value]
    return value


@functools.cache
def sandbox_schema() -> dict[str, Any]:
    """The vendored v1beta1 `openAPIV3Schema` of `Sandbox` (structural, as in the CRD)."""
    crd = yaml.safe_load((CRD_DIR / "agents.x-k8s.io_sandboxes.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def _date_time(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    try:
        datetime.fromisoformat(instance)
    except ValueError:
        return False
    return "T" in instance


_FORMATS = jsonschema.FormatChecker(formats=())
_FORMATS.checks("date-time")(_date_time)


@functools.cache
def _sandbox_validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(
        structural_to_json_schema(sandbox_schema()), format_checker=_FORMATS
    )


# --- core objects through kubernetes-validate --------------------------------------------------


@functools.cache
def _core_validator(kind: str, api_version: str) -> jsonschema.Draft202012Validator | None:
    """kubernetes-validate's strict schema of its newest bundled version, loaded once."""
    import referencing
    from kubernetes_validate import utils

    version = utils.latest_version()
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    folder = f"kubernetes-json-schema/v{version}-local-strict"
    try:
        schema = utils.schema_contents(f"{folder}/{kind.lower()}-{group_version}.json", version)
    except FileNotFoundError:
        return None
    definitions = utils.schema_contents(f"{folder}/_definitions.json", version)
    registry: referencing.Registry[Any] = referencing.Registry()
    registry = referencing.Resource.from_contents(schema) @ registry
    registry = referencing.Resource.from_contents(definitions) @ registry
    return jsonschema.Draft202012Validator(schema, registry=registry)


# --- errors → causes ---------------------------------------------------------------------------


def field_path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _join(base: str, name: str) -> str:
    return f"{base}.{name}" if base else name


def causes_of(error: jsonschema.ValidationError) -> list[Cause]:
    """Kubernetes-style causes for one schema error (several for several unknown fields)."""
    path = field_path(error.absolute_path)
    instance = error.instance
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        known = set(error.schema.get("properties", {}))
        return [
            Cause("FieldValueInvalid", "field not declared in schema", _join(path, name))
            for name in sorted(set(instance) - known)
        ]
    if error.validator == "required" and isinstance(instance, dict):
        missing = [n for n in error.validator_value if n not in instance]
        return [Cause("FieldValueRequired", "Required value", _join(path, n)) for n in missing]
    if error.validator == "enum":
        supported = ", ".join(f'"{v}"' for v in error.validator_value)
        return [
            Cause(
                "FieldValueNotSupported",
                f'Unsupported value: "{instance}": supported values: {supported}',
                path,
            )
        ]
    if error.validator == "type":
        return [
            Cause(
                "FieldValueTypeInvalid",
                f"Invalid value: {instance!r}: {path} in body must be of type "
                f"{error.validator_value}",
                path,
            )
        ]
    return [Cause("FieldValueInvalid", f"Invalid value: {instance!r}: {error.message}", path)]


# --- names and metadata ------------------------------------------------------------------------


def _name_causes(resource: Resource, name: str, body: dict[str, Any]) -> list[Cause]:
    if resource in (NAMESPACES,):
        rule, limit, what = DNS1123_LABEL, 63, "RFC 1123 label"
    elif resource is SERVICES or (
        resource.kind == "Sandbox" and body.get("spec", {}).get("service") is True
    ):
        rule, limit, what = DNS1035_LABEL, 63, "RFC 1035 label"
    else:
        rule, limit, what = DNS1123_SUBDOMAIN, 253, "RFC 1123 subdomain"
    if len(name) > limit:
        return [
            Cause(
                "FieldValueInvalid",
                f'Invalid value: "{name}": must be no more than {limit} characters',
                "metadata.name",
            )
        ]
    if not rule.match(name):
        return [
            Cause(
                "FieldValueInvalid",
                f'Invalid value: "{name}": a lowercase {what} '
                "must consist of lower case alphanumeric characters or '-'",
                "metadata.name",
            )
        ]
    return []


def _label_causes(labels: Any) -> list[Cause]:
    if labels is None:
        return []
    if not isinstance(labels, dict):
        return [Cause("FieldValueTypeInvalid", "labels must be a map", "metadata.labels")]
    causes = []
    for key, value in labels.items():
        name = key.rsplit("/", 1)[-1]
        prefix = key[: -len(name) - 1] if "/" in key else ""
        if (
            len(name) > 63
            or not LABEL_NAME.match(name)
            or (prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)))
        ):
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    f'Invalid value: "{key}": name part must be valid',
                    "metadata.labels",
                )
            )
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            causes.append(
                Cause(
                    "FieldValueInvalid",
                    f'Invalid value: "{value}": a valid label must be an empty string or consist '
                    "of alphanumeric characters, '-', '_' or '.', at most 63 characters",
                    "metadata.labels",
                )
            )
    return causes


def _secret_causes(body: dict[str, Any]) -> list[Cause]:
    causes = []
    for key, value in (body.get("data") or {}).items():
        try:
            base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            causes.append(Cause("FieldValueInvalid", "illegal base64 data", f"data[{key}]"))
    return causes


def _extra_fields(error: jsonschema.ValidationError) -> list[str]:
    known = set(error.schema.get("properties", {}))
    return sorted(set(error.instance) - known)


def _schema_errors(
    resource: Resource,
    validator: Any,
    body: dict[str, Any],
    field_validation: str | None,
    warnings: list[str],
) -> list[jsonschema.ValidationError]:
    """Schema errors, after the `fieldValidation` the client asked for handled unknown fields:
    Strict → 400, Warn → dropped with a warning, Ignore → dropped; none asked → 422 (stricter
    than the real server, which defaults to Warn: so a test sees the mistake)."""
    found = list(validator.iter_errors(body))
    unknown = [
        e for e in found if e.validator == "additionalProperties" and isinstance(e.instance, dict)
    ]
    if not unknown or field_validation not in ("Strict", "Warn", "Ignore"):
        return sorted(found, key=lambda e: list(map(str, e.absolute_path)))
    names = [_join(field_path(e.absolute_path), n) for e in unknown for n in _extra_fields(e)]
    if field_validation == "Strict":
        listed = ", ".join(f'unknown field "{n}"' for n in names)
        raise ApiError(
            400,
            "BadRequest",
            f'{resource.kind} in version "{resource.version}" cannot be handled as a '
            f"{resource.kind}: strict decoding error: {listed}",
        )
    for error in unknown:
        for name in _extra_fields(error):
            del error.instance[name]
    if field_validation == "Warn":
        warnings.extend(f'unknown field "{n}"' for n in names)
    return list(validator.iter_errors(body))


def validate(
    resource: Resource,
    body: dict[str, Any],
    *,
    field_validation: str | None = None,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """The object as the server would store it (CRD defaults applied, nulls pruned), or 422."""
    warnings = [] if warnings is None else warnings
    metadata = body.get("metadata") or {}
    name = str(metadata.get("name", ""))
    causes = _name_causes(resource, name, body) + _label_causes(metadata.get("labels"))
    validator: Any
    if resource.is_custom:
        body = prune_nulls(body)
        apply_defaults(sandbox_schema(), body)
        validator = _sandbox_validator()
    else:
        validator = _core_validator(resource.kind, resource.api_version)
        if resource is SECRETS:
            causes.extend(_secret_causes(body))
    if validator is not None:
        for error in _schema_errors(resource, validator, body, field_validation, warnings):
            causes.extend(causes_of(error))
    if causes:
        raise invalid(resource.kind, resource.group, name, causes)
    return body


def check_update(resource: Resource, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Rules on change the CRD states in CEL (`x-kubernetes-validations`)."""
    if resource.is_custom:
        before = old.get("spec", {}).get("volumeClaimTemplates")
        after = new.get("spec", {}).get("volumeClaimTemplates")
        if before != after:
            raise invalid(
                resource.kind,
                resource.group,
                str(new["metadata"].get("name", "")),
                [Cause("FieldValueInvalid", "volumeClaimTemplates is immutable", "spec")],
            )


def reject(resource: Resource, name: str, field: str, message: str) -> ApiError:
    return invalid(
        resource.kind, resource.group, name, [Cause("FieldValueInvalid", message, field)]
    )
