"""A small asyncio client for the Kubernetes API: get, list, server-side apply, delete, status, events.

kopf watches; this client writes. Credentials come from the same places kubectl and kopf look
(KUBECONFIG or ~/.kube/config, else the pod's service account), loaded by the `kubernetes` package.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from typing import Any

import httpx
import kubernetes

from tradeplane.kinds import kind_of

FIELD_MANAGER = "tradeplane"


class ApiError(Exception):
    """The API server refused a request; `status` is the HTTP status, `reason` the Status reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


class _Authorization(httpx.Auth):
    """The bearer token, asked of the loaded configuration per request (it refreshes rotated tokens)."""

    def __init__(self, configuration: Any) -> None:
        self.configuration = configuration

    def auth_flow(self, request: httpx.Request) -> Any:
        # The kubernetes package files kubeconfig and in-cluster tokens under "BearerToken".
        token = self.configuration.get_api_key_with_prefix("BearerToken")
        if token:
            request.headers["Authorization"] = token
        yield request


class Kube:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None, max_connections: int = 32) -> Kube:
        configuration = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, client_configuration=configuration
            )
        except kubernetes.config.ConfigException:
            if kubeconfig:
                raise
            kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        if configuration.verify_ssl:
            context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
        else:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if configuration.cert_file:
            context.load_cert_chain(configuration.cert_file, configuration.key_file)
        client = httpx.AsyncClient(
            base_url=configuration.host,
            verify=context,
            auth=_Authorization(configuration),
            timeout=httpx.Timeout(30.0, connect=5.0),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )
        return cls(client)

    async def close(self) -> None:
        await self.client.aclose()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        content = None if body is None else json.dumps(body).encode()
        response = await self.client.request(method, path, params=params, content=content, headers=headers)
        if response.status_code >= 400:
            try:
                status = response.json()
                raise ApiError(response.status_code, status.get("reason", ""), status.get("message", ""))
            except ValueError:
                raise ApiError(response.status_code, "", response.text[:500]) from None
        return response.json() if response.content else {}

    async def get(
        self, api_version: str, kind: str, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        try:
            return await self._request("GET", kind_of(api_version, kind).path(namespace, name))
        except ApiError as error:
            if error.not_found:
                return None
            raise

    async def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        cached: bool = False,
    ) -> list[dict[str, Any]]:
        """All items, page by page; `cached`: from the API server's watch cache (may lag a moment, but
        spares etcd a read)."""
        params = {"resourceVersion": "0"} if cached else {"limit": "500"}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        items: list[dict[str, Any]] = []
        path = kind_of(api_version, kind).path(namespace)
        while True:
            page = await self._request("GET", path, params=params)
            items += page.get("items", [])
            token = page.get("metadata", {}).get("continue")
            if not token:
                return items
            params["continue"] = token

    async def apply(self, manifest: Mapping[str, Any], field_manager: str = FIELD_MANAGER) -> dict[str, Any]:
        """Server-side apply: create or update the fields this manager owns, taking them over if needed."""
        metadata = manifest["metadata"]
        path = kind_of(manifest["apiVersion"], manifest["kind"]).path(
            metadata.get("namespace"), metadata["name"]
        )
        return await self._request(
            "PATCH",
            path,
            params={"fieldManager": field_manager, "force": "true"},
            body=manifest,
            content_type="application/apply-patch+yaml",
        )

    async def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        path = kind_of(manifest["apiVersion"], manifest["kind"]).path(manifest["metadata"].get("namespace"))
        return await self._request("POST", path, body=manifest)

    async def delete(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        name: str,
        *,
        propagation: str = "Background",
        uid: str | None = None,
    ) -> bool:
        """Delete (with a uid precondition when given); False when it was already gone."""
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self._request("DELETE", kind_of(api_version, kind).path(namespace, name), body=body)
        except ApiError as error:
            if error.not_found:
                return False
            raise
        return True

    async def patch(
        self, api_version: str, kind: str, namespace: str | None, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        """JSON merge patch, for objects the operator does not own (e.g. a user's HTTPRoute weights)."""
        return await self._request(
            "PATCH",
            kind_of(api_version, kind).path(namespace, name),
            body=patch,
            content_type="application/merge-patch+json",
        )

    async def patch_status(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """Merge-patch the status subresource; with a resourceVersion, refused (409) if the object moved."""
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return await self._request(
            "PATCH",
            kind_of(api_version, kind).path(namespace, name, "status"),
            body=body,
            content_type="application/merge-patch+json",
        )

    async def served(self, group_version: str, plural: str) -> bool:
        """Does the API serve this resource (e.g. is a CRD installed)? Discovery needs no RBAC grant."""
        try:
            resources = await self._request("GET", f"/apis/{group_version}")
        except ApiError as error:
            if error.not_found:
                return False
            raise
        return any(resource.get("name") == plural for resource in resources.get("resources", []))
