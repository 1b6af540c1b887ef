"""Small helpers over the official ``kubernetes`` client, shared by the lab's processes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

from dr_kit.kube import parse_quantity  # noqa: F401 - re-exported for the lab


def now_rfc3339(t: float | None = None) -> str:
    dt = datetime.fromtimestamp(t, UTC) if t is not None else datetime.now(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def api_client(kubeconfig: str | Path, context: str) -> k8s.ApiClient:
    return k8s_config.new_client_from_config(config_file=str(kubeconfig), context=context)


def is_status(e: Exception, *codes: int) -> bool:
    return isinstance(e, ApiException) and e.status in codes


class Kube:
    """The calls the lab controllers make, returning plain dicts."""

    def __init__(self, api: k8s.ApiClient) -> None:
        self.api = api
        self.core = k8s.CoreV1Api(api)
        self.custom = k8s.CustomObjectsApi(api)
        self.apps = k8s.AppsV1Api(api)
        self.storage = k8s.StorageV1Api(api)

    def _d(self, obj: Any) -> dict[str, Any]:
        return obj if isinstance(obj, dict) else self.api.sanitize_for_serialization(obj)

    # core
    def pvcs(self, namespace: str | None = None) -> list[dict[str, Any]]:
        r = (self.core.list_namespaced_persistent_volume_claim(namespace) if namespace
             else self.core.list_persistent_volume_claim_for_all_namespaces())
        return self._d(r)["items"]

    def pvs(self) -> list[dict[str, Any]]:
        return self._d(self.core.list_persistent_volume())["items"]

    def namespaces(self) -> list[dict[str, Any]]:
        return self._d(self.core.list_namespace())["items"]

    def get_pvc(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._d(self.core.read_namespaced_persistent_volume_claim(name, namespace))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    # custom objects
    def list_custom(self, group: str, version: str, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        try:
            if namespace:
                return self.custom.list_namespaced_custom_object(group, version, namespace, plural)["items"]
            return self.custom.list_cluster_custom_object(group, version, plural)["items"]
        except ApiException as e:
            if e.status == 404:  # kind not served here
                return []
            raise

    def get_custom(self, group: str, version: str, plural: str, name: str,
                   namespace: str | None = None) -> dict[str, Any] | None:
        try:
            if namespace:
                return self.custom.get_namespaced_custom_object(group, version, namespace, plural, name)
            return self.custom.get_cluster_custom_object(group, version, plural, name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def create_custom(self, group: str, version: str, plural: str, body: dict[str, Any],
                      namespace: str | None = None) -> dict[str, Any]:
        try:
            if namespace:
                return self.custom.create_namespaced_custom_object(group, version, namespace, plural, body)
            return self.custom.create_cluster_custom_object(group, version, plural, body)
        except ApiException as e:
            if e.status == 409:
                got = self.get_custom(group, version, plural, body["metadata"]["name"], namespace)
                if got is not None:
                    return got
            raise

    def patch_custom(self, group: str, version: str, plural: str, name: str, body: dict[str, Any],
                     namespace: str | None = None, *, status: bool = False) -> dict[str, Any]:
        if namespace:
            fn = (self.custom.patch_namespaced_custom_object_status if status
                  else self.custom.patch_namespaced_custom_object)
            return fn(group, version, namespace, plural, name, body)
        fn2 = (self.custom.patch_cluster_custom_object_status if status
               else self.custom.patch_cluster_custom_object)
        return fn2(group, version, plural, name, body)

    def delete_custom(self, group: str, version: str, plural: str, name: str,
                      namespace: str | None = None) -> None:
        try:
            if namespace:
                self.custom.delete_namespaced_custom_object(group, version, namespace, plural, name)
            else:
                self.custom.delete_cluster_custom_object(group, version, plural, name)
        except ApiException as e:
            if e.status != 404:
                raise
