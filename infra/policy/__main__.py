#!/usr/bin/env python3
"""The tradeplane CrossGuard policy pack; the policies are in tradeplane_infra.policies.

`--policy-pack policy` runs it through the Python language host. The file is also executable, for
engines without that host: `--policy-pack policy/__main__.py` starts it as an analyzer binary (it serves
the analyzer protocol and prints its port), named and versioned by PulumiPolicy.yaml beside it.
"""

from pulumi_policy import EnforcementLevel, PolicyPack

from tradeplane_infra.policies import POLICIES

PolicyPack(name="tradeplane", policies=POLICIES, enforcement_level=EnforcementLevel.MANDATORY)
