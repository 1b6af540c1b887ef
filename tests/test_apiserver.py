"""The lab API server against the official kubernetes client, on loopback in a temp dir."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from kubernetes import client, config, dynamic, watch
from kubernetes.client.rest import ApiException

from dr_kit.lab.apiserver import read_ca, start_in_thread, write_kubeconfig

TOKEN = "s3cret-token"
VGR = ("replication.storage.openshift.io", "v1alpha1", "volumegroupreplications")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    state = tmp_path_factory.mktemp("site")
    handle = start_in_thread(state / "state", TOKEN)
    kubeconfig = write_kubeconfig(state / "kubeconfig", {"main": handle.kubeconfig_site()})
    yield handle, kubeconfig
    handle.stop()


@pytest.fixture(scope="module")
def api(server):
    _, kubeconfig = server
    return config.new_client_from_config(config_file=str(kubeconfig), context="main")


@pytest.fixture(scope="module")
def core(api):
    return client.CoreV1Api(api)


@pytest.fixture(scope="module")
def custom(api):
    return client.CustomObjectsApi(api)


_counter = iter(range(1_000_000))


def http_get(url, ca, token=TOKEN):
    """A raw GET trusting the site's certificate (for what the typed client hides)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    ctx = ssl.create_default_context(cadata=ca)
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5,
                                  context=ctx)


@pytest.fixture
def ns(core):
    name = f"t{next(_counter)}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def pvc(name, labels=None, finalizers=None, size="1Gi"):
    return client.V1PersistentVolumeClaim(
        metadata=client.V1ObjectMeta(name=name, labels=labels, finalizers=finalizers),
        spec=client.V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteOnce"],
            resources=client.V1VolumeResourceRequirements(requests={"storage": size}),
            storage_class_name="lab-array",
        ),
    )


def vgr(name, **spec):
    body = {
        "apiVersion": "replication.storage.openshift.io/v1alpha1",
        "kind": "VolumeGroupReplication",
        "metadata": {"name": name},
        "spec": {
            "volumeGroupReplicationClassName": "lab-cg",
            "replicationState": "primary",
            "source": {"selector": {"matchLabels": {"app": "shop"}}},
        },
    }
    body["spec"].update(spec)
    return body


def test_discovery(api, server):
    version = client.VersionApi(api).get_code()
    assert version.major == "1"
    groups = {g.name: g for g in client.ApisApi(api).get_api_versions().groups}
    assert groups["groupsnapshot.storage.k8s.io"].preferred_version.version == "v1"
    served = {v.version for v in groups["groupsnapshot.storage.k8s.io"].versions}
    assert {"v1", "v1beta2"} <= served
    assert "hspc.hitachi.com" in groups and "storage.k8s.io" in groups and "apps" in groups
    core_resources = {r.name: r for r in client.CoreV1Api(api).get_api_resources().resources}
    assert core_resources["persistentvolumeclaims"].namespaced
    assert not core_resources["persistentvolumes"].namespaced
    assert "pvc" in core_resources["persistentvolumeclaims"].short_names
    assert "persistentvolumeclaims/status" in core_resources
    repl = client.CustomObjectsApi(api).get_api_resources(*VGR[:2])
    vgr_entry = next(r for r in repl.resources if r.name == "volumegroupreplications")
    assert vgr_entry.kind == "VolumeGroupReplication" and "watch" in vgr_entry.verbs


def test_namespaces_pvcs_and_pvs(core, ns):
    names = {n.metadata.name for n in core.list_namespace().items}
    assert {"default", ns} <= names
    created = core.create_namespaced_persistent_volume_claim(ns, pvc("sales-db"))
    assert created.metadata.uid and created.metadata.creation_timestamp
    assert created.status.phase == "Pending"
    got = core.read_namespaced_persistent_volume_claim("sales-db", ns)
    assert got.spec.resources.requests["storage"] == "1Gi"
    assert got.metadata.resource_version == created.metadata.resource_version
    everywhere = core.list_persistent_volume_claim_for_all_namespaces()
    assert ("sales-db", ns) in {(p.metadata.name, p.metadata.namespace) for p in everywhere.items}

    pv = client.V1PersistentVolume(
        metadata=client.V1ObjectMeta(name=f"pv-{ns}"),
        spec=client.V1PersistentVolumeSpec(
            access_modes=["ReadWriteOnce"],
            capacity={"storage": "1Gi"},
            csi=client.V1CSIPersistentVolumeSource(driver="lab.dr-kit", volume_handle="vol-1"),
        ),
    )
    core.create_persistent_volume(pv)
    assert core.read_persistent_volume(f"pv-{ns}").spec.csi.volume_handle == "vol-1"

    with pytest.raises(ApiException) as e:
        core.create_namespaced_persistent_volume_claim(ns, pvc("sales-db"))
    assert e.value.status == 409 and json.loads(e.value.body)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as e:
        core.read_namespaced_persistent_volume_claim("nope", ns)
    assert e.value.status == 404
    with pytest.raises(ApiException) as e:
        core.create_namespaced_persistent_volume_claim("no-such-namespace", pvc("x"))
    assert e.value.status == 404 and "namespaces" in json.loads(e.value.body)["message"]


def test_generate_name_and_core_validation(core, ns):
    made = core.create_namespaced_config_map(
        ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(generate_name="cfg-"), data={"a": "b"})
    )
    assert made.metadata.name.startswith("cfg-") and len(made.metadata.name) == 9
    bad = pvc("no-size")
    bad.spec.resources.requests = {}
    with pytest.raises(ApiException) as e:
        core.create_namespaced_persistent_volume_claim(ns, bad)
    assert e.value.status == 422
    assert "spec.resources.requests.storage: Required value" in json.loads(e.value.body)["message"]
    with pytest.raises(ApiException) as e:
        core.create_namespaced_config_map(
            ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="Bad_Name"))
        )
    assert e.value.status == 422 and "metadata.name" in json.loads(e.value.body)["message"]


def test_label_and_field_selectors(core, ns):
    for name, labels in [
        ("a", {"app": "shop", "tier": "db"}),
        ("b", {"app": "shop", "tier": "cache"}),
        ("c", {"app": "other"}),
        ("d", {}),
    ]:
        core.create_namespaced_persistent_volume_claim(ns, pvc(name, labels=labels or None))

    def names(**kw):
        items = core.list_namespaced_persistent_volume_claim(ns, **kw).items
        return sorted(p.metadata.name for p in items)

    assert names(label_selector="app=shop") == ["a", "b"]
    assert names(label_selector="app==shop,tier=db") == ["a"]
    assert names(label_selector="app!=shop") == ["c", "d"]
    assert names(label_selector="tier in (db,cache)") == ["a", "b"]
    assert names(label_selector="app notin (shop)") == ["c", "d"]
    assert names(label_selector="tier") == ["a", "b"]
    assert names(label_selector="!tier") == ["c", "d"]
    assert names(field_selector="metadata.name=c") == ["c"]
    assert names(field_selector="metadata.name!=c", label_selector="app") == ["a", "b"]
    every = core.list_persistent_volume_claim_for_all_namespaces(
        field_selector=f"metadata.namespace={ns}", label_selector="app=other"
    )
    assert [p.metadata.name for p in every.items] == ["c"]
    with pytest.raises(ApiException) as e:
        names(label_selector="app in (shop")
    assert e.value.status == 400


def test_watch_from_resource_version(core, ns):
    start = core.list_namespaced_persistent_volume_claim(ns).metadata.resource_version
    core.create_namespaced_persistent_volume_claim(ns, pvc("w1"))
    core.patch_namespaced_persistent_volume_claim("w1", ns, {"metadata": {"labels": {"x": "1"}}})
    core.delete_namespaced_persistent_volume_claim("w1", ns)
    events = [
        (e["type"], e["object"].metadata.name)
        for e in watch.Watch().stream(
            core.list_namespaced_persistent_volume_claim,
            ns,
            resource_version=start,
            timeout_seconds=1,
        )
    ]
    assert events == [("ADDED", "w1"), ("MODIFIED", "w1"), ("DELETED", "w1")]


def test_watch_live_and_selector_transitions(core, ns):
    core.create_namespaced_persistent_volume_claim(ns, pvc("pre", labels={"app": "shop"}))
    seen = []
    w = watch.Watch()

    def consume():
        for e in w.stream(
            core.list_namespaced_persistent_volume_claim,
            ns,
            label_selector="app=shop",
            timeout_seconds=3,
        ):
            seen.append((e["type"], e["object"].metadata.name))
            if len(seen) == 4:
                w.stop()

    t = threading.Thread(target=consume)
    t.start()
    time.sleep(0.3)
    core.create_namespaced_persistent_volume_claim(ns, pvc("live", labels={"app": "shop"}))
    core.create_namespaced_persistent_volume_claim(ns, pvc("ignored", labels={"app": "x"}))
    core.patch_namespaced_persistent_volume_claim("ignored", ns, {"metadata": {"labels": {"app": "shop"}}})
    core.patch_namespaced_persistent_volume_claim("live", ns, {"metadata": {"labels": {"app": "gone"}}})
    t.join(5)
    assert seen == [("ADDED", "pre"), ("ADDED", "live"), ("ADDED", "ignored"), ("DELETED", "live")]


def test_watch_too_old_resource_version_is_gone(tmp_path):
    with start_in_thread(tmp_path / "s", TOKEN) as handle:  # seeds three namespaces
        pass
    with start_in_thread(tmp_path / "s", TOKEN) as handle:  # history starts at the restart
        url = f"{handle.url}/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=1"
        with http_get(url, handle.ca_pem) as resp:
            event = json.loads(resp.readline())
        assert event["type"] == "ERROR" and event["object"]["code"] == 410
        with pytest.raises(urllib.error.HTTPError) as e:  # not a resourceVersion at all
            http_get(url.replace("=1", "=-5"), handle.ca_pem)
        assert e.value.code == 400


def test_update_conflict(core, ns):
    made = core.create_namespaced_persistent_volume_claim(ns, pvc("c1"))
    made.metadata.labels = {"v": "1"}
    updated = core.replace_namespaced_persistent_volume_claim("c1", ns, made)
    assert int(updated.metadata.resource_version) > int(made.metadata.resource_version)
    made.metadata.labels = {"v": "2"}  # still carries the old resourceVersion
    with pytest.raises(ApiException) as e:
        core.replace_namespaced_persistent_volume_claim("c1", ns, made)
    assert e.value.status == 409 and json.loads(e.value.body)["reason"] == "Conflict"


def test_merge_and_json_patch(custom, ns):
    custom.create_namespaced_custom_object(*VGR[:2], ns, VGR[2], vgr("g1"))
    out = custom.patch_namespaced_custom_object(
        *VGR[:2], ns, VGR[2], "g1", {"metadata": {"labels": {"tier": "gold"}}}
    )
    assert out["metadata"]["labels"] == {"tier": "gold"}
    out = custom.patch_namespaced_custom_object(
        *VGR[:2], ns, VGR[2], "g1",
        [
            {"op": "add", "path": "/metadata/labels/zone", "value": "a"},
            {"op": "remove", "path": "/metadata/labels/tier"},
            {"op": "replace", "path": "/spec/autoResync", "value": True},
        ],
        _content_type="application/json-patch+json",
    )
    assert out["metadata"]["labels"] == {"zone": "a"} and out["spec"]["autoResync"] is True
    assert out["metadata"]["generation"] == 2


def test_status_subresource_and_generation(custom, ns):
    made = custom.create_namespaced_custom_object(
        *VGR[:2], ns, VGR[2], {**vgr("s1"), "status": {"state": "Primary"}}
    )
    assert "status" not in made and made["metadata"]["generation"] == 1
    assert made["spec"]["autoResync"] is False  # schema default applied
    st = custom.patch_namespaced_custom_object_status(
        *VGR[:2], ns, VGR[2], "s1",
        {"status": {"state": "Primary", "observedGeneration": 1}, "spec": {"autoResync": True}},
    )
    assert st["status"]["state"] == "Primary" and st["spec"]["autoResync"] is False
    assert st["metadata"]["generation"] == 1
    main = custom.patch_namespaced_custom_object(
        *VGR[:2], ns, VGR[2], "s1", {"spec": {"replicationState": "secondary"},
                                     "status": {"state": "Tampered"}},
    )
    assert main["metadata"]["generation"] == 2
    assert main["status"] == {"state": "Primary", "observedGeneration": 1}
    labelled = custom.patch_namespaced_custom_object(
        *VGR[:2], ns, VGR[2], "s1", {"metadata": {"labels": {"a": "b"}}}
    )
    assert labelled["metadata"]["generation"] == 2  # metadata changes keep the generation
    same = custom.patch_namespaced_custom_object(
        *VGR[:2], ns, VGR[2], "s1", {"metadata": {"labels": {"a": "b"}}}
    )
    assert same["metadata"]["resourceVersion"] == labelled["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as e:  # selector is immutable (CEL self == oldSelf)
        custom.patch_namespaced_custom_object(
            *VGR[:2], ns, VGR[2], "s1", {"spec": {"source": {"selector": {"matchLabels": {"x": "y"}}}}}
        )
    assert e.value.status == 422 and "immutable" in json.loads(e.value.body)["message"]


def test_delete_with_finalizers(core, ns):
    core.create_namespaced_persistent_volume_claim(ns, pvc("f1", finalizers=["lab/protect"]))
    core.delete_namespaced_persistent_volume_claim("f1", ns)
    pending = core.read_namespaced_persistent_volume_claim("f1", ns)
    assert pending.metadata.deletion_timestamp is not None
    core.patch_namespaced_persistent_volume_claim("f1", ns, {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as e:
        core.read_namespaced_persistent_volume_claim("f1", ns)
    assert e.value.status == 404


def test_namespace_delete_removes_content(core, ns):
    core.create_namespaced_persistent_volume_claim(ns, pvc("plain"))
    core.create_namespaced_persistent_volume_claim(ns, pvc("held", finalizers=["lab/protect"]))
    core.delete_namespace(ns)
    assert core.read_namespace(ns).status.phase == "Terminating"
    assert [p.metadata.name for p in core.list_namespaced_persistent_volume_claim(ns).items] == ["held"]
    with pytest.raises(ApiException) as e:
        core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="x")))
    assert e.value.status == 403
    # a strategic merge patch merges finalizers as a set: [] changes nothing, as on a real
    # cluster; the $deleteFromPrimitiveList directive removes one
    core.patch_namespaced_persistent_volume_claim("held", ns, {"metadata": {"finalizers": []}})
    assert core.read_namespaced_persistent_volume_claim("held", ns).metadata.finalizers
    core.patch_namespaced_persistent_volume_claim(
        "held", ns, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["lab/protect"]}})
    with pytest.raises(ApiException) as e:
        core.read_namespace(ns)
    assert e.value.status == 404


def test_schema_rejection(custom, ns):
    body = vgr("bad")
    del body["spec"]["source"]
    body["spec"]["replicationState"] = "sideways"
    with pytest.raises(ApiException) as e:
        custom.create_namespaced_custom_object(*VGR[:2], ns, VGR[2], body)
    status = json.loads(e.value.body)
    assert e.value.status == 422 and status["reason"] == "Invalid"
    assert "spec.source: Required value" in status["message"]
    assert 'spec.replicationState: Unsupported value: "sideways"' in status["message"]
    assert {c["field"] for c in status["details"]["causes"]} == {"spec.source", "spec.replicationState"}


def test_hitachi_kinds_and_served_versions(custom, ns):
    repl = custom.create_namespaced_custom_object(
        "hspc.hitachi.com", "v1", ns, "replications",
        {"apiVersion": "hspc.hitachi.com/v1", "kind": "Replication", "metadata": {"name": "r1"},
         "spec": {"persistentVolumeClaimName": "sales-db", "replicationType": "UR",
                  "consistencyGroupId": 3, "pvolJournalId": 0, "svolJournalId": "1",
                  "isConsistency": True, "fenceLevel": "async", "parentName": "g"}},
    )
    assert repl["spec"]["consistencyGroupId"] == 3
    custom.create_namespaced_custom_object(
        "groupsnapshot.storage.k8s.io", "v1beta2", ns, "volumegroupsnapshots",
        {"apiVersion": "groupsnapshot.storage.k8s.io/v1beta2", "kind": "VolumeGroupSnapshot",
         "metadata": {"name": "snap"},
         "spec": {"source": {"selector": {"matchLabels": {"app": "shop"}}}}},
    )
    as_v1 = custom.get_namespaced_custom_object(
        "groupsnapshot.storage.k8s.io", "v1", ns, "volumegroupsnapshots", "snap"
    )
    assert as_v1["apiVersion"] == "groupsnapshot.storage.k8s.io/v1"


def test_dynamic_client(api, ns):
    dyn = dynamic.DynamicClient(api)
    res = dyn.resources.get(api_version="replication.storage.openshift.io/v1alpha1",
                            kind="VolumeGroupReplication")
    res.create(body=vgr("dyn"), namespace=ns)
    got = res.get(name="dyn", namespace=ns)
    assert got.spec.replicationState == "primary"
    listed = res.get(namespace=ns)
    assert [i.metadata.name for i in listed.items] == ["dyn"]
    pvcs = dyn.resources.get(api_version="v1", kind="PersistentVolumeClaim")
    pvcs.create(body=pvc("dynpvc").to_dict() | {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": "dynpvc"}, "spec": {"accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}}}}, namespace=ns)
    assert pvcs.get(name="dynpvc", namespace=ns).status.phase == "Pending"


def test_token_refused(server, tmp_path):
    handle, _ = server
    bad = write_kubeconfig(tmp_path / "kc", {"main": (handle.url, "wrong", handle.ca_pem)})
    assert oct(os.stat(bad).st_mode & 0o777) == "0o600"
    core = client.CoreV1Api(config.new_client_from_config(config_file=str(bad), context="main"))
    with pytest.raises(ApiException) as e:
        core.list_namespace()
    assert e.value.status == 401 and json.loads(e.value.body)["reason"] == "Unauthorized"
    with pytest.raises(urllib.error.HTTPError) as e2:
        http_get(f"{handle.url}/version", handle.ca_pem, token=None)
    assert e2.value.code == 401


def test_restart_keeps_objects(tmp_path):
    state = tmp_path / "state"
    with start_in_thread(state, TOKEN) as h:
        core = client.CoreV1Api(config.new_client_from_config(
            config_file=str(write_kubeconfig(tmp_path / "kc", {"s": h.kubeconfig_site()})), context="s"))
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="shop")))
        core.create_namespaced_persistent_volume_claim("shop", pvc("stock-db"))
        core.create_namespaced_config_map("shop", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="tmp")))
        core.delete_namespaced_config_map("tmp", "shop")
        last = int(core.list_namespace().metadata.resource_version)
    with open(state / "objects.log", "ab") as f:
        f.write(b'{"op":"put","rv":99')  # a torn last record, as after a crash mid-write
    with start_in_thread(state, TOKEN) as h:
        core = client.CoreV1Api(config.new_client_from_config(
            config_file=str(write_kubeconfig(tmp_path / "kc", {"s": h.kubeconfig_site()})), context="s"))
        assert core.read_namespaced_persistent_volume_claim("stock-db", "shop").spec.access_modes
        assert [c.metadata.name for c in core.list_namespaced_config_map("shop").items] == []
        made = core.create_namespaced_config_map(
            "shop", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="after")))
        assert int(made.metadata.resource_version) == last + 1


def test_process_entry(tmp_path):
    ready = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dr_kit.lab.apiserver", "--state-dir", str(tmp_path / "s"),
         "--token", TOKEN, "--ready-file", str(ready)],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        port = int(ready.read_text())
        url = f"https://127.0.0.1:{port}/api/v1/namespaces/default"
        with http_get(url, read_ca(tmp_path / "s")) as resp:
            assert json.loads(resp.read())["metadata"]["name"] == "default"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    refused = subprocess.run(
        [sys.executable, "-m", "dr_kit.lab.apiserver", "--state-dir", str(tmp_path / "s"),
         "--token", TOKEN, "--host", "0.0.0.0"],
        capture_output=True, text=True, timeout=30,
    )
    assert refused.returncode == 2 and refused.stderr.startswith("error: ")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kubectl(server, ns, core):
    _, kubeconfig = server
    core.create_namespaced_persistent_volume_claim(ns, pvc("k1"))

    def kubectl(*args, stdin=None, ok=True):
        done = subprocess.run(
            ["kubectl", "--kubeconfig", str(kubeconfig), "--context", "main", "-n", ns, *args],
            capture_output=True, text=True, timeout=30, input=stdin,
            env={**os.environ, "HOME": str(Path(kubeconfig).parent)},
        )
        assert (done.returncode == 0) == ok, done.stderr
        return done.stdout if ok else done.stderr

    assert "k1" in kubectl("get", "pvc")
    kubectl("label", "pvc", "k1", "app=shop")
    assert "k1" in kubectl("get", "pvc", "-l", "app=shop", "-o", "name")
    kubectl("patch", "pvc", "k1", "--type", "merge", "-p", '{"metadata":{"annotations":{"a":"b"}}}')
    out = json.loads(kubectl("get", "pvc", "k1", "-o", "json"))
    assert out["metadata"]["labels"]["app"] == "shop" and out["metadata"]["annotations"]["a"] == "b"
    kubectl("label", "namespace", ns, "dr-kit/protect=ConsistentCopyToCloud")
    assert core.read_namespace(ns).metadata.labels["dr-kit/protect"] == "ConsistentCopyToCloud"

    # typed commands send protobuf; manifests go through server-side (strict) validation
    kubectl("create", "namespace", f"{ns}-kc")
    assert core.read_namespace(f"{ns}-kc").status.phase == "Active"
    kubectl("create", "configmap", "cfg", "--from-literal=a=b")
    assert core.read_namespaced_config_map("cfg", ns).data == {"a": "b"}
    manifest = json.dumps(vgr("applied") | {"metadata": {"name": "applied", "namespace": ns}})
    assert "created" in kubectl("apply", "-f", "-", stdin=manifest)
    assert "applied" in kubectl("get", "vgr")
    bad = json.loads(manifest)
    bad["metadata"]["name"], bad["spec"]["bogus"] = "bogus", 1
    assert 'unknown field "spec.bogus"' in kubectl("create", "-f", "-", stdin=json.dumps(bad), ok=False)


def test_owner_references_are_garbage_collected(core, custom, ns):
    owner = custom.create_namespaced_custom_object(*VGR[:2], ns, VGR[2], vgr("owner"))
    ref = client.V1OwnerReference(api_version=owner["apiVersion"], kind=owner["kind"],
                                  name="owner", uid=owner["metadata"]["uid"])
    for name in ("dep", "kept"):
        core.create_namespaced_config_map(
            ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, owner_references=[ref])))
    core.patch_namespaced_config_map("kept", ns, {"metadata": {"finalizers": ["lab/hold"]}})
    custom.delete_namespaced_custom_object(*VGR[:2], ns, VGR[2], "owner")
    left = {c.metadata.name: c for c in core.list_namespaced_config_map(ns).items}
    assert "dep" not in left and left["kept"].metadata.deletion_timestamp is not None
    with pytest.raises(ApiException) as e:
        core.delete_namespace("default")
    assert e.value.status == 403


def http_call(handle, method, path, body=b"", ctype="application/json"):
    """A raw request; returns (status, parsed JSON body)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(handle.url + path, data=data or None, method=method,
                                 headers={"Authorization": f"Bearer {TOKEN}",
                                          "Content-Type": ctype})
    ctx = ssl.create_default_context(cadata=handle.ca_pem)
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


DEPLOY = {"apiVersion": "apps/v1", "kind": "Deployment",
          "metadata": {"name": "web"},
          "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                   "template": {"metadata": {"labels": {"app": "web"}},
                                "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}}
JP = "application/json-patch+json"
MP = "application/merge-patch+json"
SMP = "application/strategic-merge-patch+json"
_NEST = b'{"metadata":{"name":"deep"},"data":{"a":' + b"[" * 1000 + b"]" * 1000 + b"}}"
_NEST_PATCH = b'{"metadata":{"annotations":' + b'{"a":' * 1000 + b'"x"' + b"}" * 1001 + b"}"
BAD_INPUTS = [  # (method, path under the namespace, body, content type, expected code)
    ("POST", "configmaps", {"metadata": {"name": "l", "labels": ["a"]}}, None, 400),
    ("POST", "configmaps", _NEST, None, 400),
    ("PATCH", "configmaps/cm", _NEST_PATCH, MP, 400),
    ("PATCH", "configmaps/cm", [{"op": "add", "path": 5, "value": "x"}], JP, 400),
    ("PATCH", "configmaps/cm", [{"op": "move", "path": "/data/b"}], JP, 400),
    ("PATCH", "configmaps/cm", [{"op": "copy", "path": "/data/b"}], JP, 400),
    ("PATCH", "configmaps/cm", [{"op": "add", "path": "/metadata/finalizers", "value": []},
                                {"op": "add", "path": "/metadata/finalizers/²", "value": "a/b"}],
     JP, 400),
    ("POST", "deployments", json.dumps(DEPLOY).replace('"replicas": 1', '"replicas": NaN').encode(),
     None, 400),
    ("PATCH", "deployments/web", b'{"spec": {"replicas": Infinity}}', MP, 400),
    ("PATCH", "deployments/web", b'{"spec": {"replicas": 1e999}}', SMP, 400),
    ("POST", "configmaps", {"metadata": {"name": "rv", "resourceVersion": "5"}}, None, 400),
    ("POST", "configmaps", {"metadata": {"name": "t"}, "data": {"a": 1}}, None, 400),
    ("POST", "configmaps", {"metadata": {"name": "t"}}, "text/plain", 415),
    ("PATCH", "configmaps/cm", {"data": {"a": "b"}}, "application/json", 415),
    ("PATCH", "deployments/web", {"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}},
     SMP, 400),
    ("PATCH", "deployments/web", {"spec": {"selector": {"matchLabels": ["x"]}}}, MP, 400),
    ("DELETE", "configmaps/cm", {"preconditions": ["x"]}, None, 400),
    ("DELETE", "configmaps/cm", {"propagationPolicy": "Sideways"}, None, 422),
    ("GET", "configmaps?labelSelector=a,,b", b"", None, 400),
    ("GET", "configmaps?fieldSelector=spec.foo%3Dbar", b"", None, 400),
    ("GET", "configmaps?watch=1&timeoutSeconds=nan", b"", None, 400),
    ("GET", "configmaps?watch=maybe", b"", None, 400),
    ("GET", "configmaps?watch=1&resourceVersion=abc", b"", None, 400),
    ("POST", "configmaps?dryRun=Sometimes", {"metadata": {"name": "d"}}, None, 400),
]


@pytest.mark.parametrize("method,path,body,ctype,code", BAD_INPUTS,
                         ids=[f"{i}-{b[0]}-{b[1].split('?')[-1][:30]}" for i, b in enumerate(BAD_INPUTS)])
def test_bad_input_is_a_status_and_changes_nothing(server, core, method, path, body, ctype, code):
    handle, _ = server
    ns = "bad-input"
    if http_call(handle, "GET", f"/api/v1/namespaces/{ns}")[0] == 404:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        core.create_namespaced_config_map(ns, client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="cm"), data={"a": "b"}))
        assert http_call(handle, "POST", f"/apis/apps/v1/namespaces/{ns}/deployments",
                         DEPLOY)[0] == 201
    before = http_call(handle, "GET", "/api/v1/configmaps")[1]["metadata"]["resourceVersion"]
    group = "/apis/apps/v1" if path.startswith("deployments") else "/api/v1"
    status, reply = http_call(handle, method, f"{group}/namespaces/{ns}/{path}", body,
                              ctype or "application/json")
    assert status == code, reply
    assert reply["kind"] == "Status" and reply["code"] == code and reply["message"]
    after = http_call(handle, "GET", "/api/v1/configmaps")[1]["metadata"]["resourceVersion"]
    assert after == before
    deploys = http_call(handle, "GET", "/apis/apps/v1/deployments")[1]["items"]
    assert [d["spec"]["replicas"] for d in deploys if d["metadata"]["namespace"] == ns] == [1]


def test_quantities_are_kept_in_canonical_form(core, ns):
    made = core.create_namespaced_persistent_volume_claim(ns, pvc("q1", size="64Mi"))
    assert made.spec.resources.requests["storage"] == "64Mi"
    made = core.create_namespaced_persistent_volume_claim(ns, pvc("q2", size="1024Mi"))
    assert made.spec.resources.requests["storage"] == "1Gi"  # as a real API server stores it


MANIFEST = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web}}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: nginx:1.25
        ports: [{containerPort: 80}]
        env: [{name: A, value: "1"}, {name: B, value: "2"}]
        resources: {requests: {memory: 64Mi, cpu: "0.5"}}
      - {name: side, image: busybox}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 64Mi}}
"""


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kubectl_apply_validate_and_explain(server, ns, core):
    handle, kubeconfig = server

    def kubectl(*args, stdin=None, ok=True):
        done = subprocess.run(
            ["kubectl", "--kubeconfig", str(kubeconfig), "--context", "main", "-n", ns, *args],
            capture_output=True, text=True, timeout=60, input=stdin,
            env={**os.environ, "HOME": str(Path(kubeconfig).parent)},
        )
        assert (done.returncode == 0) == ok, done.stderr
        return done.stdout if ok else done.stderr

    assert "deployment.apps/web created" in kubectl("apply", "-f", "-", stdin=MANIFEST)
    assert kubectl("get", "pvc", "data", "-o", "jsonpath={.spec.resources.requests.storage}") == "64Mi"
    # re-apply: kubectl computes a three-way strategic merge patch from the published schema
    changed = MANIFEST.replace("nginx:1.25", "nginx:1.26").replace(
        ', {name: B, value: "2"}', "")
    assert "deployment.apps/web configured" in kubectl("apply", "-f", "-", stdin=changed)
    web, side = json.loads(kubectl("get", "deploy", "web", "-o", "json"))["spec"]["template"][
        "spec"]["containers"]
    assert web["image"] == "nginx:1.26" and web["env"] == [{"name": "A", "value": "1"}]
    assert web["ports"] == [{"containerPort": 80}] and side == {"name": "side", "image": "busybox"}
    assert web["resources"]["requests"] == {"cpu": "500m", "memory": "64Mi"}  # canonical form
    # validation: unknown fields are refused (strict), dropped with --validate=false
    typo = changed.replace("replicas: 2", "replicas: 2\n  replicaz: 3")
    assert 'unknown field "spec.replicaz"' in kubectl("apply", "-f", "-", stdin=typo, ok=False)
    kubectl("apply", "--validate=false", "-f", "-", stdin=typo)
    assert "replicaz" not in json.loads(kubectl("get", "deploy", "web", "-o", "json"))["spec"]
    # explain through OpenAPI v3 (default) and v2 (protobuf)
    assert "Number of desired pods" in kubectl("explain", "deployment.spec.replicas")
    assert "accessModes" in kubectl("explain", "pvc.spec", "--output", "plaintext-openapiv2")
    assert "replicationState" in kubectl("explain", "vgr.spec", "--output", "plaintext-openapiv2")
    # NaN is refused, so listing every Deployment keeps working
    bad = json.dumps(DEPLOY).replace('"replicas": 1', '"replicas": NaN').encode()
    assert http_call(handle, "POST", f"/apis/apps/v1/namespaces/{ns}/deployments", bad)[0] == 400
    listed = json.loads(kubectl("get", "deploy", "-A", "-o", "json"))
    assert any(d["metadata"]["name"] == "web" for d in listed["items"])
    # a strategic merge patch on a custom resource is refused with a hint, as on a real server
    kubectl("apply", "-f", "-", stdin=json.dumps(vgr("sg") | {"metadata": {"name": "sg"}}))
    err = kubectl("patch", "vgr", "sg", "-p", '{"spec":{"autoResync":true}}', ok=False)
    assert "merge" in err
    kubectl("patch", "vgr", "sg", "--type", "merge", "-p", '{"spec":{"autoResync":true}}')


def test_openapi_v2_document(server):
    handle, _ = server
    status, doc = http_call(handle, "GET", "/openapi/v2")
    assert status == 200 and doc["swagger"] == "2.0"
    pvc_def = doc["definitions"]["io.k8s.api.core.v1.PersistentVolumeClaim"]
    assert pvc_def["x-kubernetes-group-version-kind"] == [
        {"group": "", "kind": "PersistentVolumeClaim", "version": "v1"}]
    assert pvc_def["properties"]["spec"]["$ref"] == (
        "#/definitions/io.k8s.api.core.v1.PersistentVolumeClaimSpec")
    vgr_def = doc["definitions"][
        "io.openshift.storage.replication.v1alpha1.VolumeGroupReplication"]
    assert "replicationState" in vgr_def["properties"]["spec"]["properties"]
    patch = doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"]
    assert "fieldValidation" in {p["name"] for p in patch["parameters"]}
    refs = {v for v in _walk_refs(doc)}
    assert all(r.removeprefix("#/definitions/") in doc["definitions"] for r in refs)
    req = urllib.request.Request(handle.url + "/openapi/v2", headers={
        "Authorization": f"Bearer {TOKEN}",
        "Accept": "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"})
    ctx = ssl.create_default_context(cadata=handle.ca_pem)
    with urllib.request.urlopen(req, timeout=30, context=ctx) as resp:
        assert resp.headers["Content-Type"].endswith("+protobuf")
        from dr_kit.lab.apiserver.protobuf import fields
        top = fields(resp.read())
    assert top[1] == [b"2.0"] and len(top[9]) == 1 and len(top[8]) == 1


def _walk_refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _walk_refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk_refs(v)


@pytest.mark.slow
def test_scale_benchmark_runs(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "dr_kit.lab.apiserver.bench", "--namespaces", "3", "--pvcs", "2",
         "--rounds", "2", "--watchers", "2", "--patches", "4"],
        capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "8/8 events delivered" in done.stdout and "list every PVC (6)" in done.stdout
