"""dr_kit.kube without a cluster: quantities, the registry, paths, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dr_kit.errors import Conflict, InvalidInput, NotFound, Unavailable
from dr_kit.kube import RESOURCES, Kube, Resource, api_client, api_error, parse_quantity, register


@pytest.mark.parametrize(("q", "expected"), [
    ("64Mi", 64 * 2**20), ("1G", 10**9), ("1.5Gi", 3 * 2**29), ("100", 100), (7, 7),
    ("500m", 1), ("1500m", 2), ("1e3", 1000), ("0", 0),
])
def test_quantities_through_the_official_parser(q, expected) -> None:
    assert parse_quantity(q) == expected


@pytest.mark.parametrize("bad", ["1g", "lots", "", None, "1.2.3Mi", True, [1]])
def test_a_bad_quantity_is_one_invalid_input_line(bad) -> None:
    with pytest.raises(InvalidInput, match="not a quantity") as e:
        parse_quantity(bad)
    assert "\n" not in str(e.value)


def test_registry_paths_and_scope() -> None:
    pvc, vgs = RESOURCES["PersistentVolumeClaim"], RESOURCES["VolumeGroupSnapshot"]
    assert Kube.path(pvc, "shop", "sales-db") == "/api/v1/namespaces/shop/persistentvolumeclaims/sales-db"
    assert Kube.path(RESOURCES["PersistentVolume"], "ignored", "pv-1") == "/api/v1/persistentvolumes/pv-1"
    assert Kube.path(vgs, "shop", "s1", "status") == (
        "/apis/groupsnapshot.storage.k8s.io/v1beta2/namespaces/shop/volumegroupsnapshots/s1/status")
    assert RESOURCES["Deployment"].crd_name is None and RESOURCES["StorageClass"].crd_name is None
    assert RESOURCES["VolumeGroupReplication"].crd_name == \
        "volumegroupreplications.replication.storage.openshift.io"
    assert vgs.at("v1").api_version == "groupsnapshot.storage.k8s.io/v1"
    assert register(RESOURCES["Secret"]) is RESOURCES["Secret"]  # idempotent
    with pytest.raises(ValueError, match="registered already"):
        register(Resource("Secret", "", "v2", "secrets", True))


def test_http_errors_are_one_line_and_typed() -> None:
    where = "the main site's API server at https://127.0.0.1:1"
    assert isinstance(api_error(404, {"message": "x not found"}, where=where), NotFound)
    assert isinstance(api_error(409, {"message": "exists"}, where=where), Conflict)
    assert isinstance(api_error(422, {"message": "bad"}, where=where), InvalidInput)
    assert isinstance(api_error(503, None, where=where), Unavailable)
    e401 = api_error(401, {"message": "Unauthorized"}, where=where, doing="GET /api/v1/pods")
    assert isinstance(e401, InvalidInput) and "refused the kubeconfig credentials" in str(e401)
    e403 = api_error(403, {"message": "no\nmore"}, where=where)
    assert isinstance(e403, InvalidInput) and "forbidden" in str(e403) and "\n" not in str(e403)


def _kubeconfig(tmp_path: Path) -> Path:
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "main",
           "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
           "users": [{"name": "u", "user": {"token": "s3cret-token"}}],
           "contexts": [{"name": n, "context": {"cluster": "c", "user": "u"}}
                        for n in ("main", "backup")]}
    p = tmp_path / "kubeconfig"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_client_factory_errors(tmp_path: Path) -> None:
    kc = _kubeconfig(tmp_path)
    api = api_client(kc, "backup")
    assert api.configuration.host == "https://127.0.0.1:1" and api.configuration.retries == 1
    with pytest.raises(InvalidInput, match=r"'nosuch' is not in kubeconfig .*contexts: main, backup"):
        api_client(kc, "nosuch")
    with pytest.raises(NotFound, match="does not exist"):
        api_client(tmp_path / "missing", "main")
    junk = tmp_path / "junk"
    junk.write_text("this: [is not a kubeconfig")
    with pytest.raises(InvalidInput) as e:
        api_client(junk, "main")
    assert "\n" not in str(e.value)
    with pytest.raises(InvalidInput, match="not running in a cluster"):
        api_client(in_cluster=True)


def test_unreachable_server_is_unavailable_without_the_token(tmp_path: Path) -> None:
    kube = Kube(api_client(_kubeconfig(tmp_path), "main"), timeout=2, where="the main site")
    with pytest.raises(Unavailable, match="the main site is unreachable") as e:
        kube.items("Namespace")
    assert "s3cret-token" not in str(e.value)


def test_undeclared_calls_are_refused_before_they_are_made(tmp_path: Path) -> None:
    kube = Kube(api_client(_kubeconfig(tmp_path), "main"), {("", "namespaces"): frozenset({"list"})})
    with pytest.raises(Exception, match="not in its declared permissions"):
        kube.delete("Namespace", "shop")
    with pytest.raises(Exception, match="not in its declared permissions"):
        kube.patch("PersistentVolume", "pv", {}, status=True)
    assert ("", "persistentvolumes/status", "patch") in kube.calls
