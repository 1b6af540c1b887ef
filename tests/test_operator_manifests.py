"""Every manifest the operator generates validates against the upstream CRD schema; the
deployment's RBAC is exactly what the runner uses."""

from __future__ import annotations

import argparse
from pathlib import Path

import jsonschema
import pytest
import yaml

from dr_kit.operator import cli, manifests
from dr_kit.operator.backends import RESOURCES, csi_addons, hitachi
from dr_kit.operator.policy import HitachiSettings, Policy, ReplicationClass
from dr_kit.operator.reconcile import reconcile
from dr_kit.operator.runner import permissions

CRDS = Path(__file__).resolve().parents[1] / "dr_kit" / "crds"


def strict(schema):
    """The CRD schema as JSON Schema: x-kubernetes-* dropped, unknown fields refused.

    The API server silently prunes fields a structural schema does not declare, so a typo
    in a generated manifest would vanish without an error; here it fails the test.
    """
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if (out.get("type") == "object" and "properties" in out
            and "additionalProperties" not in out
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def crd_schema(kind: str) -> dict:
    res = RESOURCES[kind]
    path = CRDS / f"{res.group}_{res.plural}.yaml"
    if not path.exists():
        pytest.skip(f"{path.name} is not vendored yet")
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "CustomResourceDefinition":
            for v in doc["spec"]["versions"]:
                if v["name"] == res.version:
                    return strict(v["schema"]["openAPIV3Schema"])
    raise AssertionError(f"{path.name} has no version {res.version}")


def validate(obj: dict) -> None:
    schema = crd_schema(obj["kind"])
    assert obj["apiVersion"] == RESOURCES[obj["kind"]].api_version
    jsonschema.validate(obj, schema, cls=jsonschema.Draft7Validator)


POLICIES = [
    Policy(),
    Policy(auto_resync=True, replication_state="primary",
           storage_classes={"lab-array": ReplicationClass(
               name="gold", provisioner="x.csi.example.com",
               parameters={"schedulingInterval": "1m", "replication.storage.openshift.io/"
                           "replication-secret-name": "s"},
               volume_replication_class="gold-vr")}),
]


@pytest.mark.parametrize("policy", POLICIES)
def test_csi_addons_manifests_validate_against_upstream_crds(policy):
    rc = policy.storage_classes["lab-array"]
    validate(csi_addons.volume_group_replication(policy, "shop", rc.name,
                                                 rc.volume_replication_class))
    validate(csi_addons.volume_group_replication_class(rc.name, "p", rc.parameters, "shop"))
    validate(csi_addons.volume_replication_class("vr", "p", rc.parameters, "shop"))


def test_strict_schema_catches_a_misspelt_field():
    policy = Policy()
    vgr = csi_addons.volume_group_replication(policy, "shop", "c")
    vgr["spec"]["replicationStat"] = vgr["spec"].pop("replicationState")
    with pytest.raises(jsonschema.ValidationError):
        validate(vgr)


@pytest.mark.parametrize("settings", [
    HitachiSettings(),
    HitachiSettings(pvol_journal_id=1, svol_journal_id=2, fence_level="async"),
])
def test_hitachi_manifests_validate_against_their_crds(settings):
    policy = Policy(backend="hitachi", hitachi=settings)
    validate(hitachi.replication_group(policy, "shop", 7))
    validate(hitachi.replication(policy, "shop", "sales-db", "lab-array", 7))


def test_manifests_from_reconcile_validate():
    ns = {"metadata": {"name": "shop", "labels": {"dr-kit.io/backup": "ConsistentCopyToCloud"}}}
    pvcs = [{"metadata": {"name": n, "namespace": "shop"},
             "spec": {"storageClassName": "lab-array"}} for n in ("sales-db", "stock-db")]
    scs = [{"metadata": {"name": "lab-array"}, "provisioner": "array.lab.dr-kit.io"}]
    for policy in (POLICIES[1], Policy(backend="hitachi")):
        plan = reconcile(ns, pvcs, [], scs, policy)
        bodies = [a.body for a in plan.actions if a.op == "create"]
        assert bodies
        for body in bodies:
            validate(body)


@pytest.mark.parametrize("policy", [
    Policy(), Policy(backend="hitachi"),
    Policy(allowed_backends=("hitachi",), delete_backup_on_unprotect=True)])
def test_rbac_rules_are_exactly_the_runner_permissions(policy):
    docs = manifests.render(policy)
    (role,) = [d for d in docs if d["kind"] == "ClusterRole"]
    got = {(r["apiGroups"][0], r["resources"][0]): frozenset(r["verbs"]) for r in role["rules"]}
    assert got == permissions(policy)
    for r in role["rules"]:  # one group, one resource per rule; never a wildcard
        assert len(r["apiGroups"]) == 1 and len(r["resources"]) == 1
        assert "*" not in r["verbs"] and "*" not in r["resources"]
    assert not any(k[1] in ("secrets", "configmaps", "pods") for k in got)
    assert "delete" not in got[("", "persistentvolumeclaims")]
    if policy.backend == "csi-addons":
        assert got[("replication.storage.openshift.io", "volumegroupreplicationclasses")] == {
            "list", "watch", "create"}  # classes are never changed or deleted
    assert "update" not in set().union(*got.values())  # merge patches only


def _roles(docs: list[dict]) -> dict[str, dict[tuple[str, str], list[str]]]:
    return {d["metadata"]["name"]: {(r["apiGroups"][0], r["resources"][0]): r["verbs"]
                                    for r in d["rules"]}
            for d in docs if d["kind"] == "ClusterRole"}


def test_backup_site_peer_reads_pvcs_and_deletes_only_when_asked():
    roles = _roles(manifests.render(Policy(), site="backup"))
    peer = roles[manifests.PEER_NAME]
    assert peer[("", "persistentvolumeclaims")] == ["list", "watch"]
    assert peer[("", "namespaces")] == ["list", "watch"]  # the DR state, read at both sites
    assert not any(v for k, v in peer.items() if set(v) & {"create", "patch", "update"})
    roles = _roles(manifests.render(Policy(delete_backup_on_unprotect=True), site="backup"))
    assert roles[manifests.PEER_NAME][("", "persistentvolumeclaims")] == [
        "list", "watch", "delete"]


def test_backup_site_operator_runs_there_with_the_schedules_permissions():
    from dr_kit.operator.schedule import PERMISSIONS

    docs = manifests.render(Policy(), site="backup")
    op = _roles(docs)["dr-kit-operator"]
    for (group, resource), verbs in PERMISSIONS.items():
        assert set(verbs) <= set(op[(group, resource)]), (group, resource)
    # everything the main site's operator may do, too: it takes over after a failover
    assert set(_roles(manifests.render(Policy()))["dr-kit-operator"]) <= set(op)
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--site") + 1] == "backup"
    bindings = {d["metadata"]["name"]: d["subjects"][0]["name"]
                for d in docs if d["kind"] == "ClusterRoleBinding"}
    assert bindings == {"dr-kit-operator": "dr-kit-operator",
                        manifests.PEER_NAME: manifests.PEER_NAME}
    for d in docs:
        check_k8s(d, K8S_KINDS[(d["apiVersion"], d["kind"])])


def test_a_main_site_render_has_no_peer_identity():
    docs = manifests.render(Policy())
    assert manifests.PEER_NAME not in {d["metadata"]["name"] for d in docs}
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    assert "--site" not in dep["spec"]["template"]["spec"]["containers"][0]["args"]


def test_deployment_runs_the_cli_with_the_mounted_policy():
    policy = POLICIES[1]
    text = cli.render_manifests(policy, backup_secret="backup-kubeconfig")
    docs = list(yaml.safe_load_all(text))
    kinds = [d["kind"] for d in docs]
    assert kinds == ["Namespace", "ServiceAccount", "ConfigMap", "ClusterRole",
                     "ClusterRoleBinding", "Deployment"]
    config = docs[2]
    assert Policy.from_dict(yaml.safe_load(config["data"]["policy.yaml"])) == policy
    dep = docs[-1]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "dr-kit-operator"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    parser = argparse.ArgumentParser()
    cli.add_operator_commands(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(container["args"])
    assert args.in_cluster and args.policy == manifests.POLICY_PATH
    assert args.serve == "0.0.0.0:8080"
    assert container["command"] == ["python3", "-m", "dr_kit.operator"]
    assert args.backup_context == "backup" and args.func.__name__ == "_cmd_run"
    binding = docs[4]
    assert binding["subjects"][0] == {"kind": "ServiceAccount", "name": "dr-kit-operator",
                                      "namespace": "dr-kit-system"}


# -- the Deployment against the Kubernetes API's own types ---------------------------------

K8S_KINDS = {("apps/v1", "Deployment"): "V1Deployment", ("v1", "Namespace"): "V1Namespace",
             ("v1", "ServiceAccount"): "V1ServiceAccount", ("v1", "ConfigMap"): "V1ConfigMap",
             ("rbac.authorization.k8s.io/v1", "ClusterRole"): "V1ClusterRole",
             ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "V1ClusterRoleBinding"}


def check_k8s(value, type_name: str, where: str = "") -> None:
    """Strictly check ``value`` against the official client's model ``type_name`` (generated
    from the Kubernetes OpenAPI schema): unknown fields, wrong types, missing required
    fields all fail (the API server would prune or refuse them)."""
    from kubernetes.client import ApiClient
    from kubernetes.client import models as k8s_models

    if type_name.startswith("List["):
        assert isinstance(value, list), f"{where}: expected a list"
        for i, v in enumerate(value):
            check_k8s(v, type_name[5:-1], f"{where}[{i}]")
        return
    if type_name.startswith("Dict["):
        assert isinstance(value, dict), f"{where}: expected a map"
        for k, v in value.items():
            check_k8s(v, type_name[5:-1].split(", ", 1)[1], f"{where}.{k}")
        return
    simple = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object,
              "datetime": str}
    if type_name in simple:
        assert isinstance(value, simple[type_name]) and not (
            type_name == "int" and isinstance(value, bool)), f"{where}: not a {type_name}"
        return
    model = getattr(k8s_models, type_name)
    assert isinstance(value, dict), f"{where}: expected an object ({type_name})"
    by_json = {j: a for a, j in model.attribute_map.items()}
    unknown = set(value) - set(by_json)
    assert not unknown, f"{where}: fields {sorted(unknown)} are not in {type_name}"
    for key, v in value.items():
        check_k8s(v, model.openapi_types[by_json[key]], f"{where}.{key}")
    if not where:  # required fields and enums: the client's own model validation
        ApiClient()._ApiClient__deserialize(value, type_name)


@pytest.mark.parametrize("kw", [{}, {"backup_secret": "backup-kubeconfig", "health_port": 9000}])
def test_rendered_objects_validate_against_the_kubernetes_api_types(kw):
    for doc in manifests.render(POLICIES[1], **kw):
        check_k8s(doc, K8S_KINDS[(doc["apiVersion"], doc["kind"])])


def test_strict_k8s_check_catches_a_misspelt_probe_field():
    dep = manifests.render(Policy())[-1]
    probe = dep["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]
    probe["httpget"] = probe.pop("httpGet")
    with pytest.raises(AssertionError, match="httpget"):
        check_k8s(dep, "V1Deployment")


@pytest.mark.parametrize("port", [8080, 9000])
def test_probes_hit_the_address_the_operator_serves(port):
    dep = manifests.render(Policy(), health_port=port)[-1]
    pod = dep["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    (cport,) = container["ports"]
    assert cport == {"name": "health", "containerPort": port, "protocol": "TCP"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    parser = argparse.ArgumentParser()
    cli.add_operator_commands(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(container["args"])
    # the address the container's command serves is the probes' port, on the pod's addresses
    from dr_kit.operator.health import parse_address
    assert parse_address(args.serve, allow_remote=args.in_cluster) == ("0.0.0.0", port)
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}


@pytest.mark.slow
def test_the_operator_entry_point_is_lean_and_renders_the_same_manifests():
    import subprocess
    import sys
    code = ("import sys; from dr_kit.operator.__main__ import main; main(['manifests']); "
            "heavy = sorted(m for m in ('pandas', 'sqlalchemy', 'papermill', 'matplotlib') "
            "if m in sys.modules); print('# heavy:', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.rstrip().endswith("# heavy: []")
    assert out[: out.rindex("# heavy")] == cli.render_manifests()
