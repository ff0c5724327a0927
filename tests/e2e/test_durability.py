"""The durability proof on the local control plane, one run per fault (bench/durability_matrix.py runs the
matrix five times): see e2e/durability.py for the stack and the checks made after each fault.

The cases share one stack and run in CASES' order: the node deletion first, while a risk pod still sits on
the node the placement gave it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e.durability import CASES, ProofStack, proof_stack

from support import Kubectl

pytestmark = pytest.mark.cluster

# 120 orders/s keeps the file near 4 minutes on 2 shared cores; bench/durability_matrix.py runs the
# faults at 1k orders/s (a run of the five takes 5-6 minutes there, the recovery checks of more fills).
PAIRS_PER_SECOND = 60.0
SECONDS = 16.0


@pytest.fixture(scope="module")
def stack(
    kube_env: Path, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ProofStack]:
    request.getfixturevalue("tradingservice_crd")
    namespace = f"proof-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    try:
        with proof_stack(kubectl, kube_env, namespace, tmp_path_factory.mktemp("proof")) as built:
            yield built
    finally:
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.mark.parametrize("case", CASES)
def test_every_fill_is_in_positions_once_and_no_limit_is_passed(stack: ProofStack, case: str) -> None:
    result = getattr(stack, case)(PAIRS_PER_SECOND, SECONDS)
    print(result)
    assert result.fills > 0
