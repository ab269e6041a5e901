"""Print what the program would register for a stack, as JSON, by running it under Pulumi mocks.

    python -m tests.infra.render <stack> [--config key=value ...] [--secret key=value ...]

Runs `__main__.py` with the stack file's config (Pulumi.<stack>.yaml), each `--config` on top (short keys, e.g.
`networkMode=host`; `key=` removes a key), and secrets: the test defaults of tests/infra/harness.py unless given
with `--secret` (`--secret apiKeys=` leaves one out). Exit status 2 and one line on stderr for bad config.

Output (stdout), one JSON object:
    {"stack": str,
     "resources": [{"type", "name", "urn", "custom", "parent", "inputs", "secretInputs",
                    "options": {"protect", "deleteBeforeReplace", "replaceOnChanges", "ignoreChanges",
                                "provider", "dependsOn"}}, ...],   # registration order; root stack left out
     "outputs": {name: value}, "secretOutputs": [name, ...]}
`inputs` use the engine's camelCase names with secrets unwrapped; `secretInputs` lists the paths that were
secret (e.g. "envs[8]"). Integers are JSON integers.
"""

from __future__ import annotations

import argparse
import json
import sys

from components.config import StackConfigError
from tests.infra.harness import ProgramRun, execute


def _pairs(items: list[str], flag: str) -> dict[str, str | None]:
    pairs: dict[str, str | None] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"render: {flag} expects key=value, got {item!r}")
        pairs[key] = value or None
    return pairs


def render(stack: str, overrides: dict[str, str | None], secrets: dict[str, str | None]) -> dict:
    """Run the program for `stack` under mocks and return the JSON document described in the module docstring."""
    run = ProgramRun.for_stack(stack, overrides, secrets)

    async def go() -> None:
        await run.run()

    execute(go)
    return {
        "stack": stack,
        "resources": [r.to_json() for r in run.monitor.registrations if r.type != "pulumi:pulumi:Stack"],
        "outputs": {name: output.value for name, output in run.outputs.items()},
        "secretOutputs": sorted(name for name, output in run.outputs.items() if output.secret),
    }


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m tests.infra.render", description=__doc__.split("\n\n")[0])
    parser.add_argument("stack", help="stack name: reads Pulumi.<stack>.yaml")
    parser.add_argument(
        "--config", action="append", default=[], metavar="KEY=VALUE", help="config override (short key)"
    )
    parser.add_argument("--secret", action="append", default=[], metavar="KEY=VALUE", help="secret value (short key)")
    args = parser.parse_args(argv)
    try:
        document = render(args.stack, _pairs(args.config, "--config"), _pairs(args.secret, "--secret"))
    except StackConfigError as error:
        print(f"render: {error}", file=sys.stderr)
        return 2
    except FileNotFoundError as error:
        print(f"render: {error}", file=sys.stderr)
        return 2
    json.dump(document, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
