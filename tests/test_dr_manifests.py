"""What DR operations write to real clusters validates against the upstream CRDs in
dr_kit/crds (the role changes of VolumeGroupReplication and Hitachi's ReplicationGroup, the
pre-provisioned snapshots of a DR test) and, for built-in kinds, against the official
client's models (the Deployment copy)."""

from __future__ import annotations

import pytest
from kubernetes import client as k8s
from test_operator_manifests import validate

from dr_kit.dr import manifests
from dr_kit.errors import InvalidInput
from dr_kit.operator.backends import csi_addons, hitachi
from dr_kit.operator.policy import Policy

POLICY = Policy()
SRC_VGR = csi_addons.volume_group_replication(POLICY, "shop", "dr-kit-lab-array")
SRC_VGR.update(metadata={**SRC_VGR["metadata"], "uid": "u1", "resourceVersion": "7",
                         "annotations": {"storage.dr-kit.io/array-group": "shop-dr-kit-shop"}},
               status={"state": "Primary", "conditions": []})
SRC_RG = hitachi.replication_group(POLICY, "shop", 3)


@pytest.mark.parametrize("role", manifests.ROLES)
def test_role_changes_validate_against_upstream_crds(role):
    for backend, src in (("csi-addons", SRC_VGR), ("hitachi", SRC_RG)):
        body = manifests.role_copy(src, role, backend)
        validate(body)
        assert "status" not in body and "uid" not in body["metadata"]
        assert "annotations" not in body["metadata"]  # the driver's own notes stay behind
        kind, patch = manifests.role_patch(backend, role)
        merged = {**body, "spec": {**body["spec"], **patch["spec"]}}
        validate(merged)
        assert manifests.role_of(backend, merged) == role
    assert manifests.role_copy(SRC_VGR, role, "csi-addons")["spec"]["replicationState"] == role


def test_a_fresh_role_object_is_the_operators_own_body():
    body = manifests.role_object("csi-addons", POLICY, "shop", "secondary", class_name="dr-kit-lab-array")
    validate(body)
    assert body["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "dr-kit-operator"
    with pytest.raises(InvalidInput):
        manifests.role_patch("csi-addons", "sideways")


def test_observed_role_reads_the_plugins_status():
    obj = {"status": {"state": "Secondary", "conditions": [{"type": "Completed", "status": "True"}]}}
    assert manifests.observed_role("csi-addons", obj) == ("secondary", True)
    assert manifests.observed_role("csi-addons", {"status": {"state": "Primary"}}) == ("primary", False)
    assert manifests.observed_role("csi-addons", None) == (None, False)
    assert manifests.observed_role("hitachi", {"status": {"role": "Primary", "pairState": "PAIR"}}) == \
        ("primary", True)
    assert manifests.status_note({"status": {"message": "volume is being promoted"}}) == "volume is being promoted"
    assert manifests.status_note({"status": {"role": "Primary", "pairState": "COPY"}}) == "pair state COPY"
    assert manifests.status_note({"metadata": {"name": "rg"}}) == manifests.status_note(None) == "no status yet"


VS = {"sales-db": {"metadata": {"name": "drtest-1-sales-db", "namespace": "shop"}}}
VSC = {"sales-db": {"spec": {"driver": "lab.dr-kit.io", "volumeSnapshotClassName": "lab-array-snap",
                             "source": {"snapshotHandle": "groupsnapshot-u/pvc-1"}},
                    "status": {"snapshotHandle": "groupsnapshot-u/pvc-1"}}}


def test_drtest_imports_and_clones_validate():
    docs = manifests.snapshot_imports("shop", "shop-drtest", VS, VSC, prefix="drtest-1")
    assert [d["kind"] for d in docs] == ["VolumeSnapshotContent", "VolumeSnapshot"]
    for d in docs:
        validate(d)
    vsc, vs = docs
    assert vsc["spec"]["deletionPolicy"] == "Retain"  # the group keeps its array snapshot
    assert vsc["spec"]["volumeSnapshotRef"] == {"kind": "VolumeSnapshot", "apiVersion": vs["apiVersion"],
                                                "name": vs["metadata"]["name"], "namespace": "shop-drtest"}
    assert vs["spec"]["source"]["volumeSnapshotContentName"] == vsc["metadata"]["name"]
    src = {"sales-db": {"spec": {"storageClassName": "lab-array", "accessModes": ["ReadWriteOnce"],
                                 "resources": {"requests": {"storage": "64Mi"}}}}}
    (pvc,) = manifests.restored_pvcs("shop-drtest", src, {"sales-db": vs["metadata"]["name"]}, "shop")
    model = k8s.ApiClient()._ApiClient__deserialize(pvc, "V1PersistentVolumeClaim")
    assert model.metadata.name == "sales-db" and model.spec.data_source.name == vs["metadata"]["name"]
    with pytest.raises(InvalidInput, match="no snapshot handle"):
        manifests.snapshot_imports("shop", "shop-drtest", VS, {"sales-db": {}}, prefix="x")


def test_the_application_copy_is_a_valid_deployment_in_the_test_namespace():
    dep = {"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": "shop", "namespace": "shop", "uid": "x", "resourceVersion": "3",
                        "annotations": {"deployment.kubernetes.io/revision": "4"}, "labels": {"app": "shop"}},
           "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "shop"}},
                    "template": {"metadata": {"labels": {"app": "shop"}},
                                 "spec": {"containers": [{"name": "shop", "image": "shop:1"}],
                                          "volumes": [{"name": "d", "persistentVolumeClaim":
                                                       {"claimName": "sales-db"}}]}}},
           "status": {"readyReplicas": 3}}
    (copy,) = manifests.application_copy([dep, {"kind": "Pod"}], "shop-drtest", "shop")
    model = k8s.ApiClient()._ApiClient__deserialize(copy, "V1Deployment")
    assert model.metadata.namespace == "shop-drtest" and model.spec.replicas == 1
    assert copy["metadata"]["labels"][manifests.DRTEST_LABEL] == "shop"
    assert "status" not in copy and "uid" not in copy["metadata"]
    assert copy["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "sales-db"
    assert dep["spec"]["replicas"] == 3  # the source is left as it was


def test_scale_patch_remembers_the_replicas():
    assert manifests.scale_patch(0, remember=3) == {
        "spec": {"replicas": 0}, "metadata": {"annotations": {manifests.REPLICAS_ANNOTATION: "3"}}}
    assert manifests.scale_patch(2) == {"spec": {"replicas": 2}}
