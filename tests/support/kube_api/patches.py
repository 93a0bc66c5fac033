"""PATCH bodies: JSON merge patch (RFC 7386), strategic merge (as merge here) and JSON patch."""

from __future__ import annotations

import copy
from typing import Any

from tests.support.kube_api.errors import ApiError, bad_request, unsupported_media_type

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, `null` removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> Any:
    node = doc
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _apply_op(doc: Any, op: dict[str, Any]) -> Any:
    kind = op.get("op")
    parts = _pointer(str(op.get("path", "")))
    if kind == "test":
        node = doc
        for part in parts:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if node != op.get("value"):
            raise ApiError(422, "Invalid", f"the test operation on {op['path']} failed")
        return doc
    if kind in ("move", "copy"):
        source = _pointer(str(op["from"]))
        node = doc
        for part in source:
            node = node[int(part)] if isinstance(node, list) else node[part]
        value = copy.deepcopy(node)
        if kind == "move":
            doc = _apply_op(doc, {"op": "remove", "path": op["from"]})
        return _apply_op(doc, {"op": "add", "path": op["path"], "value": value})
    if not parts:
        if kind in ("add", "replace"):
            return copy.deepcopy(op["value"])
        raise bad_request("cannot remove the whole document")
    parent = _parent(doc, parts)
    last = parts[-1]
    if kind == "remove":
        if isinstance(parent, list):
            del parent[int(last)]
        else:
            del parent[last]
    elif kind == "add":
        if isinstance(parent, list):
            parent.insert(len(parent) if last == "-" else int(last), copy.deepcopy(op["value"]))
        else:
            parent[last] = copy.deepcopy(op["value"])
    elif kind == "replace":
        if isinstance(parent, list):
            parent[int(last)] = copy.deepcopy(op["value"])
        else:
            if last not in parent:
                raise ApiError(422, "Invalid", f"replace operation does not apply: {op['path']}")
            parent[last] = copy.deepcopy(op["value"])
    else:
        raise bad_request(f"unknown JSON patch operation {kind!r}")
    return doc


def json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902 on a copy of `target`; a path that does not resolve is 422, like the server."""
    if not isinstance(ops, list):
        raise bad_request("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in ops:
        try:
            doc = _apply_op(doc, op)
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError(
                422, "Invalid", f"the JSON patch operation {op!r} does not apply: {exc!r}"
            ) from exc
    return doc


def apply_patch(content_type: str, target: dict[str, Any], body: Any) -> dict[str, Any]:
    """The patched object; strategic merge is plain merge (our objects use no patch keys)."""
    media = content_type.split(";")[0].strip()
    if media in (MERGE, STRATEGIC):
        if not isinstance(body, dict):
            raise bad_request("a merge patch must be a JSON object")
        result = merge_patch(target, body)
    elif media == JSON_PATCH:
        result = json_patch(target, body)
    else:
        raise unsupported_media_type(media)
    if not isinstance(result, dict):
        raise bad_request("the patched object is not a JSON object")
    return result
