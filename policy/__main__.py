"""The production policy pack: `pulumi preview|up --stack prod --policy-pack policy` (rules in rules.py).

The CLI runs this file with `policy/` first on sys.path. Constructing `PolicyPack` starts the analyzer's gRPC
server and never returns, so the tests import `rules` and never this file.
"""

from pulumi_policy import EnforcementLevel, PolicyPack
from rules import POLICIES

PolicyPack(
    name="novita-gpu-api-production",
    # Each policy sets its own level; this is only the default for one that does not.
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=POLICIES,
)
