"""The tradeplane CrossGuard policy pack; the policies are in tradeplane_infra.policies."""

from pulumi_policy import EnforcementLevel, PolicyPack

from tradeplane_infra.policies import POLICIES

PolicyPack(name="tradeplane", policies=POLICIES, enforcement_level=EnforcementLevel.MANDATORY)
