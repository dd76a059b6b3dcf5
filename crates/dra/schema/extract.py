#!/usr/bin/env python3
"""Extracts the resource.k8s.io/v1 definitions this driver writes and reads from
Kubernetes' OpenAPI (Swagger 2.0) document, api/openapi-spec/swagger.json.

Usage: extract.py SWAGGER_JSON SOURCE_NOTE > resource.k8s.io-v1.json

Every definition reachable through "$ref" from the roots is copied unchanged; nothing is
added to or removed from a definition. The output is a Swagger-shaped document holding only
"definitions" (and "info" naming the source), so "#/definitions/<name>" refs still resolve.
Python 3 standard library only.
"""

import json
import sys

ROOTS = [
    "io.k8s.api.resource.v1.ResourceSlice",
    "io.k8s.api.resource.v1.ResourceSliceList",
    "io.k8s.api.resource.v1.ResourceClaim",
]
PREFIX = "#/definitions/"


def refs(node):
    """Every definition name a $ref under `node` points at."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith(PREFIX):
                yield value[len(PREFIX):]
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1], encoding="utf-8") as f:
        document = json.load(f)
    definitions = document["definitions"]
    wanted = {}
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        if name not in definitions:
            sys.exit(f"{name}: not in the document")
        wanted[name] = definitions[name]
        todo.extend(refs(definitions[name]))
    out = {
        "swagger": document.get("swagger", "2.0"),
        "info": {
            "title": "resource.k8s.io/v1 ResourceSlice, ResourceSliceList, ResourceClaim "
            "and the definitions they reference",
            "x-source": sys.argv[2],
        },
        "definitions": dict(sorted(wanted.items())),
    }
    json.dump(out, sys.stdout, indent=1, sort_keys=False, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
