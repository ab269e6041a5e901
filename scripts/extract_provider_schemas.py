"""Cut the provider interfaces the program uses out of a provider's full Pulumi schema, for tests/infra/schemas/.

    python scripts/extract_provider_schemas.py docker FULL_SCHEMA.json --source "how FULL_SCHEMA.json was obtained"
    python scripts/extract_provider_schemas.py aiven  FULL_SCHEMA.json --source "..."

FULL_SCHEMA.json is `pulumi package get-schema docker@5.2.0` output (needs the Pulumi CLI), or a provider
repository's `provider/cmd/pulumi-resource-<name>/schema.json` (`-` reads stdin). The extract keeps, for the
provider itself and for each resource below, the input properties and required inputs, plus every type they reference
(transitively); descriptions and outputs are dropped, which is all tests/infra/schema.py checks. It writes
tests/infra/schemas/<name>.schema.json with an `extract` block saying where it came from.

To cover a new resource type: add its token to RESOURCES and regenerate from a full schema.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
OUTPUT_DIR = REPO_ROOT / "tests" / "infra" / "schemas"

# The resource types the program registers, per provider (the provider's own inputs are always kept: the
# program may create one explicit provider per Docker host or Aiven account).
RESOURCES = {
    "docker": (
        "docker:index/container:Container",
        "docker:index/image:Image",
        "docker:index/remoteImage:RemoteImage",
        "docker:index/network:Network",
        "docker:index/volume:Volume",
    ),
    "aiven": (
        "aiven:index/valkey:Valkey",
        "aiven:index/valkeyUser:ValkeyUser",
    ),
}
# What a value's spec may say that the check reads; everything else (descriptions, language hints) is dropped.
_SPEC_KEYS = ("type", "$ref", "items", "additionalProperties", "enum", "properties", "required", "willReplaceOnChanges")


def _spec(value: Any) -> Any:
    """A property or type spec with only the keys the check reads, recursively."""
    if not isinstance(value, dict):
        return value
    kept = {key: value[key] for key in _SPEC_KEYS if key in value}
    for key in ("items", "additionalProperties"):
        if isinstance(kept.get(key), dict):
            kept[key] = _spec(kept[key])
    if "properties" in kept:
        kept["properties"] = {name: _spec(item) for name, item in kept["properties"].items()}
    if "enum" in kept:
        kept["enum"] = [{"value": choice["value"]} for choice in kept["enum"]]
    return kept


def _refs(value: Any) -> set[str]:
    """Every `#/types/...` token referenced anywhere inside `value`."""
    if isinstance(value, dict):
        found = {value["$ref"].removeprefix("#/types/")} if isinstance(value.get("$ref"), str) else set()
        return found.union(*(_refs(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(_refs(item) for item in value))
    return set()


def _inputs(resource: dict) -> dict:
    return {
        "inputProperties": {name: _spec(item) for name, item in resource.get("inputProperties", {}).items()},
        "requiredInputs": list(resource.get("requiredInputs", [])),
    }


def extract(full: dict, resources: tuple[str, ...], source: str) -> dict:
    """The extract of `full` for `resources`; KeyError names a resource the full schema lacks."""
    missing = [token for token in resources if token not in full["resources"]]
    if missing:
        raise KeyError(f"not in the full schema: {', '.join(missing)}")
    kept_resources = {token: _inputs(full["resources"][token]) for token in resources}
    provider = _inputs(full["provider"])
    types: dict[str, dict] = {}
    pending = _refs(provider) | _refs(kept_resources)
    while pending:
        token = pending.pop()
        if token in types:
            continue
        types[token] = _spec(full["types"][token])
        pending |= _refs(types[token]) - set(types)
    return {
        "name": full["name"],
        "extract": {
            "source": source,
            "producedBy": "scripts/extract_provider_schemas.py (inputs and referenced types only)",
            "resources": list(resources),
        },
        "provider": provider,
        "resources": kept_resources,
        "types": dict(sorted(types.items())),
    }


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("provider", choices=sorted(RESOURCES))
    parser.add_argument("full_schema", help="the provider's full schema.json, or - for stdin")
    parser.add_argument("--source", required=True, help="provider version and how the full schema was obtained")
    parser.add_argument("--output-dir", type=Path, default=OUTPUT_DIR)
    args = parser.parse_args(argv)
    text = sys.stdin.read() if args.full_schema == "-" else Path(args.full_schema).read_text()
    full = json.loads(text)
    if full.get("name") != args.provider:
        parser.error(f"the full schema is for {full.get('name')!r}, not {args.provider!r}")
    document = extract(full, RESOURCES[args.provider], args.source)
    output = args.output_dir / f"{args.provider}.schema.json"
    output.write_text(json.dumps(document, indent=1, sort_keys=False) + "\n")
    print(
        f"wrote {output.relative_to(REPO_ROOT) if output.is_relative_to(REPO_ROOT) else output}: "
        f"{len(document['resources'])} resources, {len(document['types'])} types"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
