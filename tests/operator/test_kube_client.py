"""The operator's API client against the real API server: apply, preconditions, credentials."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from support import Kubectl, token_kubeconfig
from tradeplane.kube import ApiError, Kube

pytestmark = pytest.mark.cluster


def config_map(namespace: str, value: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": namespace},
        "data": {"key": value},
    }


def test_an_identical_apply_writes_nothing_and_a_changed_one_updates(kube_env: Path, namespace: str) -> None:
    async def scenario() -> tuple[str, str, str, str]:
        kube = Kube.from_environment(str(kube_env))
        try:
            created = await kube.apply(config_map(namespace, "one"))
            again = await kube.apply(config_map(namespace, "one"))
            changed = await kube.apply(config_map(namespace, "two"))
            stored = await kube.get("v1", "ConfigMap", namespace, "settings")
            assert stored is not None
            return (
                created["metadata"]["resourceVersion"],
                again["metadata"]["resourceVersion"],
                changed["metadata"]["resourceVersion"],
                stored["data"]["key"],
            )
        finally:
            await kube.close()

    created, again, changed, value = asyncio.run(scenario())
    assert created == again
    assert changed != created
    assert value == "two"


def test_a_status_patch_from_a_stale_view_is_refused(kube_env: Path, namespace: str, crd: None) -> None:
    service = {
        "apiVersion": "tradeplane.io/v1alpha1",
        "kind": "TradingService",
        "metadata": {"name": "order", "namespace": namespace},
        "spec": {"component": "order", "image": "svc:1", "resources": {"cpus": 1, "memory": "1Gi"}},
    }

    async def scenario() -> ApiError:
        kube = Kube.from_environment(str(kube_env))
        try:
            created = await kube.create(service)
            version = created["metadata"]["resourceVersion"]
            await kube.patch_status(
                "tradeplane.io/v1alpha1", "TradingService", namespace, "order", {"message": "first"}, version
            )
            with pytest.raises(ApiError) as refused:
                await kube.patch_status(
                    "tradeplane.io/v1alpha1",
                    "TradingService",
                    namespace,
                    "order",
                    {"message": "late"},
                    version,
                )
            return refused.value
        finally:
            await kube.close()

    error = asyncio.run(scenario())
    assert error.conflict


def test_a_service_account_token_is_sent(
    kube_env: Path, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    kubectl("create", "serviceaccount", "reader", "-n", namespace)
    token = kubectl("create", "token", "reader", "-n", namespace).stdout.strip()
    kubeconfig = token_kubeconfig(kube_env, token, tmp_path / "kubeconfig")

    async def scenario() -> ApiError:
        kube = Kube.from_environment(str(kubeconfig))
        try:
            with pytest.raises(ApiError) as refused:
                await kube.list("v1", "ConfigMap", namespace)
            return refused.value
        finally:
            await kube.close()

    error = asyncio.run(scenario())
    # Authenticated as the ServiceAccount (not anonymous), and refused by RBAC.
    assert error.status == 403
    assert f"system:serviceaccount:{namespace}:reader" in error.message
