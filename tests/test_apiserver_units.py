"""The lab API server's parts on plain dicts: selectors, patches, schemas, store, protobuf."""

from __future__ import annotations

import asyncio
import json

import pytest

from dr_kit.lab.apiserver import builtin, decode, params, protobuf, quantity
from dr_kit.lab.apiserver.errors import ApiError
from dr_kit.lab.apiserver.kubeconfig import kubeconfig_dict
from dr_kit.lab.apiserver.patch import STRATEGIC, apply_patch, json_patch, merge_patch
from dr_kit.lab.apiserver.resources import default_registry, version_priority
from dr_kit.lab.apiserver.schema import CompiledSchema, prune_and_default
from dr_kit.lab.apiserver.selectors import (
    SelectorError,
    UnsupportedField,
    match_selector,
    parse_field_selector,
    parse_label_selector,
)
from dr_kit.lab.apiserver.store import Expired, StateCorrupt, Store
from dr_kit.lab.apiserver.verbs import Api


@pytest.mark.parametrize(
    "selector,labels,expected",
    [
        ("a=b", {"a": "b"}, True),
        ("a==b", {"a": "c"}, False),
        ("a!=b", {}, True),
        ("a in (x, y)", {"a": "y"}, True),
        ("a notin (x)", {}, True),
        ("a notin (x)", {"a": "x"}, False),
        ("a,!b", {"a": "1"}, True),
        ("a,!b", {"a": "1", "b": "2"}, False),
        ("example.com/tier=db,a in (1,2)", {"example.com/tier": "db", "a": "2"}, True),
        ("n>3", {"n": "4"}, True),
        ("", {"x": "y"}, True),
    ],
)
def test_label_selectors(selector, labels, expected):
    assert parse_label_selector(selector)(labels) is expected


@pytest.mark.parametrize("bad", ["a in (x", "a in ()", "=b", "a=b=c", "a>x"])
def test_bad_label_selectors(bad):
    with pytest.raises(SelectorError):
        parse_label_selector(bad)


def test_field_and_structured_selectors():
    obj = {"metadata": {"name": "x", "namespace": "shop"}, "status": {"phase": "Bound"}}
    assert parse_field_selector("metadata.name=x,metadata.namespace==shop")(obj)
    assert parse_field_selector("status.phase!=Pending")(obj)
    assert not parse_field_selector("metadata.name=y")(obj)
    sel = {"matchLabels": {"app": "shop"},
           "matchExpressions": [{"key": "tier", "operator": "In", "values": ["db"]}]}
    assert match_selector(sel, {"app": "shop", "tier": "db"})
    assert not match_selector(sel, {"app": "shop"})
    assert match_selector({}, {"anything": "x"}) and not match_selector(None, {})


def test_merge_and_json_patch():
    doc = {"a": {"b": 1, "c": [1, 2]}, "d": "x"}
    assert merge_patch(doc, {"a": {"b": None, "c": [3]}, "e": 1}) == {"a": {"c": [3]}, "d": "x", "e": 1}
    assert doc == {"a": {"b": 1, "c": [1, 2]}, "d": "x"}  # never mutated
    out = json_patch(doc, [
        {"op": "add", "path": "/a/c/-", "value": 3},
        {"op": "replace", "path": "/a/c/0", "value": 0},
        {"op": "move", "from": "/d", "path": "/f"},
        {"op": "copy", "from": "/f", "path": "/g"},
        {"op": "test", "path": "/g", "value": "x"},
        {"op": "add", "path": "/h~1i", "value": True},
    ])
    assert out == {"a": {"b": 1, "c": [0, 2, 3]}, "f": "x", "g": "x", "h/i": True}
    with pytest.raises(ApiError) as e:
        json_patch(doc, [{"op": "remove", "path": "/nope"}])
    assert e.value.code == 422
    with pytest.raises(ApiError) as e:
        json_patch(doc, [{"op": "test", "path": "/d", "value": "y"}])
    assert e.value.code == 422
    smp = apply_patch(doc, "application/strategic-merge-patch+json",
                      {"$setElementOrder/c": [], "a": {"$patch": "merge", "b": 2}})
    assert smp == {"a": {"b": 2, "c": [1, 2]}, "d": "x"}
    with pytest.raises(ApiError) as e:
        apply_patch(doc, "application/apply-patch+yaml", {})
    assert e.value.code == 415


SCHEMA = {
    "type": "object",
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["mode", "size"],
            "properties": {
                "mode": {"type": "string", "enum": ["a", "b"]},
                "size": {"x-kubernetes-int-or-string": True,
                         "anyOf": [{"type": "integer"}, {"type": "string"}]},
                "auto": {"type": "boolean", "default": False},
                "note": {"type": "string", "nullable": True},
                "params": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "fixed": {"type": "string",
                          "x-kubernetes-validations": [{"rule": "self == oldSelf",
                                                        "message": "fixed is immutable"}]},
            },
        },
    },
}


def test_prune_default_validate():
    obj = {"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "n", "extra": 1},
           "spec": {"mode": "a", "size": "1Gi", "note": None, "bogus": 1,
                    "params": {"k": "v"}, "free": {"any": {"thing": 1}}},
           "top": 1}
    unknown = prune_and_default(obj, SCHEMA)
    assert sorted(unknown) == ["spec.bogus", "top"]
    assert obj["spec"]["auto"] is False and obj["spec"]["note"] is None
    assert obj["metadata"] == {"name": "n", "extra": 1}
    assert obj["spec"]["free"] == {"any": {"thing": 1}}
    compiled = CompiledSchema(SCHEMA)
    assert compiled.validate(obj) == []
    bad = {"spec": {"mode": "c", "size": 1.5}}
    prune_and_default(bad, SCHEMA)
    causes = {c["field"]: c["message"] for c in compiled.validate(bad)}
    assert causes["spec.mode"].startswith('Unsupported value: "c"')
    assert "spec.size" in causes
    missing = compiled.validate({"spec": {"auto": True}})
    assert {c["field"] for c in missing} == {"spec.mode", "spec.size"}
    changed = compiled.immutable({"spec": {"fixed": "2"}}, {"spec": {"fixed": "1"}})
    assert changed[0]["field"] == "spec.fixed" and "immutable" in changed[0]["message"]


def test_registry_versions_and_crds():
    reg = default_registry()
    assert sorted(["v1beta1", "v1", "v2alpha1", "v1beta2"], key=version_priority) == [
        "v1", "v1beta2", "v1beta1", "v2alpha1"]
    vgs = reg.lookup("groupsnapshot.storage.k8s.io", "v1beta2", "volumegroupsnapshots")
    assert vgs is reg.lookup("groupsnapshot.storage.k8s.io", "v1", "volumegroupsnapshots")
    assert vgs.namespaced and vgs.status_subresource and vgs.preferred_version == "v1"
    repl = reg.lookup("hspc.hitachi.com", "v1", "replications")
    assert repl.kind == "Replication" and repl.namespaced and repl.status_subresource
    assert reg.lookup("snapshot.storage.k8s.io", "v1beta1", "volumesnapshots") is None  # not served


def test_store_log_torn_tail_compaction_and_expiry(tmp_path):
    key = ("", "configmaps")
    store = Store(tmp_path)
    for i in range(5):
        store.put(key, {"metadata": {"name": f"c{i}", "namespace": "ns"}})
    store.delete(key, store.get(key, "ns", "c0"))
    assert store.rv == 6
    store.compact()
    store.put(key, {"metadata": {"name": "c9", "namespace": "ns"}})
    store.close()
    with open(tmp_path / "objects.log", "ab") as f:
        f.write(b'{"op":"put","rv":8,"k":["","configmaps"],"obj":{"meta')
    again = Store(tmp_path)
    assert again.rv == 7
    assert sorted(o["metadata"]["name"] for o in again.list(key)) == ["c1", "c2", "c3", "c4", "c9"]
    with pytest.raises(Expired):
        again.subscribe(key, 3)  # history starts at the restart
    watcher, backlog = again.subscribe(key, 7)
    assert backlog == []
    again.put(key, {"metadata": {"name": "new", "namespace": "ns"}})
    change = watcher.queue.get_nowait()
    assert (change.type, change.rv, change.obj["metadata"]["name"]) == ("ADDED", 8, "new")
    with pytest.raises(Exception, match="in use"):
        Store(tmp_path)  # one server per state directory
    again.close()
    assert json.loads((tmp_path / "objects.log").read_text().splitlines()[-1])["rv"] == 8


def test_no_op_update_keeps_resource_version(tmp_path):
    async def run():
        reg = default_registry()
        api = Api(reg, Store(tmp_path))
        ns_kind = reg.by_key(("", "namespaces"))
        cm = reg.by_key(("", "configmaps"))
        api.create(ns_kind, "v1", None, {"metadata": {"name": "ns"}})
        made, _ = api.create(cm, "v1", "ns", {"metadata": {"name": "c"}, "data": {"a": "b"}})
        same, _ = api.patch(cm, "v1", "ns", "c", "application/merge-patch+json", {"data": {"a": "b"}})
        assert same["metadata"]["resourceVersion"] == made["metadata"]["resourceVersion"]
        api.store.close()

    asyncio.run(run())


def _field(number: int, payload: bytes) -> bytes:
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


def test_protobuf_namespace_and_secret():
    meta = _field(1, b"shop") + _field(11, _field(1, b"app") + _field(2, b"shop"))
    ns = protobuf.MAGIC + _field(1, _field(1, b"v1") + _field(2, b"Namespace")) + _field(
        2, _field(1, meta))
    assert protobuf.decode(ns) == {"apiVersion": "v1", "kind": "Namespace",
                                   "metadata": {"name": "shop", "labels": {"app": "shop"}}}
    secret = protobuf.MAGIC + _field(1, _field(1, b"v1") + _field(2, b"Secret")) + _field(
        2, _field(1, _field(1, b"s")) + _field(2, _field(1, b"pw") + _field(2, b"x"))
        + _field(3, b"Opaque"))
    assert protobuf.decode(secret)["data"] == {"pw": "eA=="}
    pod = protobuf.MAGIC + _field(1, _field(1, b"v1") + _field(2, b"Pod"))
    with pytest.raises(ApiError) as e:
        protobuf.decode(pod)
    assert e.value.code == 415


def test_kubeconfig_document():
    doc = kubeconfig_dict({"main": ("https://127.0.0.1:1", "t1", "PEM"),
                           "backup": ("https://127.0.0.1:2", "t2")}, current="backup")
    assert doc["current-context"] == "backup"
    main, backup = doc["clusters"]
    assert main["cluster"]["certificate-authority-data"]
    assert backup["cluster"]["insecure-skip-tls-verify"] is True
    assert [u["user"]["token"] for u in doc["users"]] == ["t1", "t2"]
    with pytest.raises(ValueError):
        kubeconfig_dict({"main": ("u", "t")}, current="nope")


def test_kubeconfig_names_a_ca_given_as_a_file(tmp_path):
    ca = tmp_path / "ca.crt"
    doc = kubeconfig_dict({"main": ("https://127.0.0.1:1", "t1", ca)})
    assert doc["clusters"][0]["cluster"] == {"server": "https://127.0.0.1:1",
                                             "certificate-authority": str(ca.resolve())}


def test_store_refuses_a_log_damaged_before_its_end(tmp_path):
    store = Store(tmp_path)
    for i in range(3):
        store.put(("", "configmaps"), {"metadata": {"name": f"c{i}", "namespace": "ns"}})
    store.close()
    lines = (tmp_path / "objects.log").read_bytes().splitlines(keepends=True)
    lines[1] = lines[1][:10] + b"\n"
    (tmp_path / "objects.log").write_bytes(b"".join(lines))
    with pytest.raises(StateCorrupt, match="bad record"):
        Store(tmp_path)
    del lines[1]  # repaired by hand; the failed open released its lock
    (tmp_path / "objects.log").write_bytes(b"".join(lines))
    healed = Store(tmp_path)
    assert sorted(o["metadata"]["name"] for o in healed.list(("", "configmaps"))) == ["c0", "c2"]
    healed.close()


# -- bad input: decoding, parameters, selectors, patches, structure -----------------------


def _code(fn, *args, **kw):
    with pytest.raises(ApiError) as e:
        fn(*args, **kw)
    return e.value.code


@pytest.mark.parametrize("raw", [
    b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}', b'{"a": 1e400}',
    b'{"a": ' + b"9" * 400 + b"}", b'{"a": ' + b"9" * 5000 + b"}", b"[" * 101 + b"]" * 101,
    b"[" * 5000 + b"]" * 5000, b'{"a": "\xff"}', b"{", b"",
])
def test_json_bodies_refused(raw):
    if not raw:
        assert decode.decode(raw, "application/json", decode.OBJECT_TYPES) is None
        return
    assert _code(decode.decode, raw, "application/json", decode.OBJECT_TYPES) == 400


def test_json_bodies_accepted_and_media_types():
    assert decode.loads_json(b'{"a": [1, 2.5, -3e2, true, null, "x"]}') == {
        "a": [1, 2.5, -300.0, True, None, "x"]}
    assert decode.loads_json(b"[" * 100 + b"]" * 100) is not None
    assert decode.decode(b'{"a": 1}', "", decode.OBJECT_TYPES) == {"a": 1}  # JSON by default
    assert decode.decode(b'{"a": 1}', "application/json; charset=utf-8",
                         decode.OBJECT_TYPES) == {"a": 1}
    assert _code(decode.decode, b'{"a": 1}', "text/plain", decode.OBJECT_TYPES) == 415
    assert _code(decode.decode, b'{"a": 1}', "application/json", decode.PATCH_TYPES) == 415


def test_yaml_bodies():
    doc = decode.decode(b"metadata:\n  name: x\n  annotations:\n    when: 2024-01-01\n"
                        b"    on: yes\n1: one\n", "application/yaml", decode.OBJECT_TYPES)
    assert doc == {"metadata": {"name": "x", "annotations": {"when": "2024-01-01", "true": True}},
                   "1": "one"}
    for bad in (b"a: .nan", b"a: !!binary aGk=", b"a: !!set {x}", b"a: [", b"---\na: 1\n---\nb: 2",
                b"a: " + b"[" * 200 + b"]" * 200):
        assert _code(decode.loads_yaml, bad) == 400, bad
    laughs = b"a: &a [x, x, x, x, x, x, x, x, x, x]\n" + b"".join(
        b"%c: &%c [*%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c]\n"
        % ((c,) * 2 + (c - 1,) * 10) for c in range(ord("b"), ord("i")))
    assert _code(decode.loads_yaml, laughs) == 400


def test_query_parameters():
    assert params.list_params({"watch": "true", "timeoutSeconds": "5"}).timeout == 5
    assert params.list_params({"watch": "1"}).watch and not params.list_params({}).watch
    for bad in ({"watch": "maybe"}, {"timeoutSeconds": "nan"}, {"timeoutSeconds": "-1"},
                {"timeoutSeconds": "1e3"}, {"limit": "x"}, {"resourceVersion": "abc"},
                {"resourceVersion": "-5"}, {"resourceVersionMatch": "Exact"},
                {"resourceVersionMatch": "Sometimes", "resourceVersion": "1"},
                {"allowWatchBookmarks": "2"}, {"includeObject": "All"}):
        assert _code(params.list_params, bad) == 400, bad
    assert params.write_params({"dryRun": "All", "fieldValidation": "Strict"}).strict
    for bad in ({"dryRun": "Some"}, {"fieldValidation": "strict"}, {"fieldManager": "x" * 200},
                {"force": "yes"}, {"gracePeriodSeconds": "soon"}, {"propagationPolicy": "All"}):
        assert _code(params.write_params, bad) == 400, bad


@pytest.mark.parametrize("bad", ["a,,b", "a,", ",a", " , ", "a in (b),", "x" * 64,
                                 "a=" + "v" * 64, "a/b/c=d"])
def test_empty_and_oversized_label_requirements(bad):
    with pytest.raises(SelectorError):
        parse_label_selector(bad)


def test_field_selectors_per_kind():
    obj = {"metadata": {"name": "a,b", "namespace": "ns"}, "type": "Opaque"}
    assert parse_field_selector(r"metadata.name=a\,b", ("metadata.name",))(obj)
    assert parse_field_selector("metadata.name=x,,", ("metadata.name",))  # empty terms skipped
    with pytest.raises(UnsupportedField, match="field label not supported: spec.foo"):
        parse_field_selector("spec.foo=bar", ("metadata.name", "metadata.namespace"))
    for bad in ("metadata.name", r"metadata.name=a\x", "metadata.name=a=b"):
        with pytest.raises(SelectorError):
            parse_field_selector(bad, ("metadata.name",))
    reg = default_registry()
    assert "type" in reg.by_key(("", "secrets")).field_labels
    assert reg.by_key(("", "persistentvolumeclaims")).field_labels == (
        "metadata.name", "metadata.namespace")


@pytest.mark.parametrize("ops,code", [
    ([{"op": "add", "path": 5, "value": 1}], 400),
    ([{"op": "move", "path": "/x"}], 400),
    ([{"op": "copy", "path": "/x", "from": ["a"]}], 400),
    ([{"op": "add", "path": "/a/c/²", "value": 1}], 400),
    ([{"op": "add", "path": "/a/c/01", "value": 1}], 400),
    ([{"op": "add", "path": "/a/c/9", "value": 1}], 422),
    ([{"op": "add", "path": "/a"}], 400),
    ([{"op": "frobnicate", "path": "/a"}], 400),
    ([{"path": "/a"}], 400),
    (["add"], 400),
    ({"op": "add"}, 400),
    ([{"op": "add", "path": "a", "value": 1}], 400),
    ([{"op": "move", "from": "/a", "path": "/a/b"}], 400),
    ([{"op": "test", "path": "/d", "value": True}], 422),
])
def test_bad_json_patches(ops, code):
    doc = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert _code(json_patch, doc, ops) == code
    assert doc == {"a": {"b": 1, "c": [1, 2]}, "d": 1}


def test_json_patch_copies_are_bounded():
    doc = {"a": "x" * 100_000}
    ops = [{"op": "copy", "from": "/a", "path": f"/b{i}"} for i in range(40)]
    assert _code(json_patch, doc, ops) == 413


def test_strategic_merge_patch():
    pod = {"metadata": {"finalizers": ["a"], "labels": {"x": "1"}},
           "spec": {"containers": [{"name": "app", "image": "v1", "ports": [{"containerPort": 80}]},
                                   {"name": "side", "image": "s1"}],
                    "tolerations": [{"key": "k"}]},
           "status": {"conditions": [{"type": "Ready", "status": "False"}]}}
    out = apply_patch(pod, STRATEGIC, {
        "metadata": {"finalizers": ["b"], "labels": {"x": None}},
        "spec": {"containers": [{"name": "app", "image": "v2"}, {"name": "new", "image": "n"},
                                {"name": "side", "$patch": "delete"}],
                 "tolerations": [{"key": "other"}]},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    assert out["metadata"] == {"finalizers": ["a", "b"], "labels": {}}
    assert out["spec"]["containers"] == [
        {"name": "app", "image": "v2", "ports": [{"containerPort": 80}]},
        {"name": "new", "image": "n"}]
    assert out["spec"]["tolerations"] == [{"key": "other"}]  # no merge key: replaced
    assert out["status"]["conditions"] == [{"type": "Ready", "status": "True"}]
    out = apply_patch(pod, STRATEGIC, {
        "metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]},
        "spec": {"$setElementOrder/containers": [{"name": "side"}, {"name": "app"}],
                 "containers": [{"name": "side", "image": "s2"}]},
        "status": {"$patch": "replace", "phase": "Running"}})
    assert out["metadata"]["finalizers"] == []
    assert [c["name"] for c in out["spec"]["containers"]] == ["side", "app"]
    assert out["status"] == {"phase": "Running"}
    ns = {"spec": {"finalizers": ["kubernetes"]}}  # Namespace spec.finalizers: replaced
    assert apply_patch(ns, STRATEGIC, {"spec": {"finalizers": []}}) == {"spec": {"finalizers": []}}
    for bad in ({"$patch": "explode"}, {"$unknown": 1}, {"spec": {"containers": [{"image": "x"}]}},
                {"metadata": {"finalizers": [{"a": 1}]}}, []):
        assert _code(apply_patch, pod, STRATEGIC, bad) == 400, bad
    assert _code(apply_patch, pod, STRATEGIC, {}, custom=True) == 415


@pytest.mark.parametrize("given,stored", [
    ("64Mi", "64Mi"), ("1024Mi", "1Gi"), ("0.5Gi", "512Mi"), ("1000", "1k"), ("1.5", "1500m"),
    ("67108864", "67108864"), (1073741824, "1073741824"), ("100M", "100M"), ("1e3", "1e3"),
    ("0.0000000001", "1n"), ("1.5Gi", "1536Mi"), ("0", "0"), ("1000Mi", "1000Mi"),
])
def test_quantities_canonical(given, stored):
    assert quantity.canonical(given) == stored


def test_quantity_refusals_and_bytes():
    for bad in ("1.2.3", "Mi", "1Xi", "1e", "١Gi", "1Gi\n5", True):
        with pytest.raises((quantity.InvalidQuantity, TypeError)):
            quantity.canonical(bad)
    assert [quantity.format_bytes(n) for n in (67108864, 1536, 1610612736, 0)] == [
        "64Mi", "1536", "1536Mi", "0"]


def test_builtin_structure():
    reg = default_registry()
    pvc_kind = reg.by_key(("", "persistentvolumeclaims"))
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
           "metadata": {"name": "p", "labels": {"a": None}, "bogus": 1, "annotations": None},
           "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1024Mi"}},
                    "volumeMode": None, "typo": True}}
    problems = builtin.conform(pvc_kind, pvc)
    assert problems.errors == []
    assert sorted(problems.unknown) == ["metadata.bogus", "spec.typo"]
    assert pvc["metadata"] == {"name": "p", "labels": {"a": ""}}
    assert pvc["spec"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    deploy = reg.by_key(("apps", "deployments"))
    bad = {"metadata": {"labels": ["x"], "ownerReferences": "me", "creationTimestamp": "yesterday"},
           "spec": {"replicas": "3", "paused": 1, "strategy": {"rollingUpdate": {"maxSurge": "25%"}},
                    "template": {"spec": {"containers": {"name": "x"}}}}}
    errors = builtin.conform(deploy, bad).errors
    assert any(e.startswith("metadata.labels: expected a map of strings, got a list") for e in errors)
    assert {e.split(":")[0] for e in errors} == {
        "metadata.labels", "metadata.ownerReferences", "metadata.creationTimestamp",
        "spec.replicas", "spec.paused", "spec.template.spec.containers"}
    secret = reg.by_key(("", "secrets"))
    assert builtin.conform(secret, {"data": {"k": "not base64!"}}).errors
    assert not builtin.conform(secret, {"data": {"k": "eA=="}, "stringData": {"x": "y"}}).errors
    vgr = reg.lookup("replication.storage.openshift.io", "v1alpha1", "volumegroupreplications")
    custom = {"metadata": {"labels": {"a": 1}, "extra": 1}, "spec": {"anything": ["kept"]}}
    problems = builtin.conform(vgr, custom)  # custom kinds: metadata only
    assert problems.errors == ["metadata.labels.a: expected a string, got a number"]
    assert problems.unknown == ["metadata.extra"] and custom["spec"] == {"anything": ["kept"]}


def test_protobuf_wrong_wire_types_are_400():
    for body in (protobuf.MAGIC + bytes([1 << 3 | 0, 5]),  # TypeMeta as a varint
                 protobuf.MAGIC + _field(1, bytes([1 << 3 | 0, 1])),  # apiVersion as a varint
                 protobuf.MAGIC + bytes([1 << 3 | 3]),  # a group
                 protobuf.MAGIC + bytes([1 << 3 | 2, 100]) + b"short"):
        assert _code(protobuf.decode, body) == 400


def test_store_indexes_survive_restart(tmp_path):
    key, owner_key = ("", "configmaps"), ("apps", "deployments")
    store = Store(tmp_path)
    store.put(owner_key, {"metadata": {"name": "o", "namespace": "a", "uid": "u-o"}})
    for ns, name in (("a", "x"), ("a", "y"), ("b", "x")):
        store.put(key, {"metadata": {"name": name, "namespace": ns, "uid": f"u-{ns}{name}",
                                     "ownerReferences": [{"uid": "u-o", "kind": "Deployment"}]}})
    store.delete(key, store.get(key, "a", "y"))
    store.put(key, {"metadata": {"name": "x", "namespace": "b", "uid": "u-bx"}})  # owner dropped
    store.close()
    again = Store(tmp_path)
    assert [o["metadata"]["name"] for o in again.list(key, "a")] == ["x"]
    assert again.has_any(key, "b") and not again.has_any(key, "c") and again.count() == 3
    assert [(k, o["metadata"]["uid"]) for k, o in again.dependents("u-o")] == [(key, "u-ax")]
    assert again.by_uid("u-bx")["metadata"]["namespace"] == "b" and again.by_uid("u-ay") is None
    again.close()


def test_encoded_lists_and_events_are_the_plain_json(tmp_path):
    from dr_kit.lab.apiserver.server import Encoded

    reg = default_registry()
    api = Api(reg, Store(tmp_path))
    ns_kind, cm = reg.by_key(("", "namespaces")), reg.by_key(("", "configmaps"))
    api.create(ns_kind, "v1", None, {"metadata": {"name": "ns"}})
    for i in range(3):
        api.create(cm, "v1", "ns", {"metadata": {"name": f"c{i}"}, "data": {"i": str(i)}})
    enc = Encoded()
    first = enc.listing(cm, api.list(cm, "v1", "ns"))
    api.patch(cm, "v1", "ns", "c1", "application/merge-patch+json", {"data": {"i": "new"}})
    listed = api.list(cm, "v1", "ns")
    assert json.loads(enc.listing(cm, listed)) == json.loads(json.dumps(listed))
    assert json.loads(first)["items"][1]["data"] == {"i": "1"}  # the cache follows versions
    event = {"type": "MODIFIED", "object": listed["items"][1]}
    assert json.loads(enc.event(cm, event)) == event
    api.store.close()
