"""``dr-kit operator manifests``: what a real cluster needs to run the operator.

A Namespace, a ServiceAccount, the policy as a ConfigMap, a least-privilege ClusterRole
(exactly :func:`dr_kit.operator.runner.permissions` for the policy's backends) and its
binding, and a one-replica Deployment (``Recreate``: two operators never overlap) whose
container serves ``/healthz``, ``/readyz`` and ``/metrics`` on ``health_port`` (bound to
the pod's addresses, where the kubelet probes it), with liveness and readiness probes and
the usual Prometheus scrape annotations.

``site="backup"`` renders what the backup site runs: the same Deployment started with
``--site backup`` (it keeps a returning old main fenced, takes over after a failover and
executes the snapshot schedules, so its ClusterRole adds
:data:`dr_kit.operator.schedule.PERMISSIONS`), and the least-privilege identity that the
main site's operator uses to read the backup site (ServiceAccount and ClusterRole
``dr-kit-operator-peer``: what :func:`~dr_kit.operator.runner.permissions` asks with
``site="backup"``; PVCs are deleted only if the policy deletes backup data).
"""

from __future__ import annotations

from typing import Any

import yaml

from dr_kit.errors import InvalidInput
from dr_kit.operator.policy import Policy
from dr_kit.operator.runner import permissions
from dr_kit.operator.schedule import with_permissions

NAME = "dr-kit-operator"
PEER_NAME = f"{NAME}-peer"  # the main site's operator reading the backup site
DEFAULT_NAMESPACE = "dr-kit-system"
DEFAULT_IMAGE = "dr-kit:0.1.0"
POLICY_PATH = "/etc/dr-kit/policy.yaml"
BACKUP_KUBECONFIG_DIR = "/etc/dr-kit/backup"
VERB_ORDER = ("get", "list", "watch", "create", "update", "patch", "delete")
DEFAULT_HEALTH_PORT = 8080
COMMAND = ("python3", "-m", "dr_kit.operator")


def rbac_rules(policy: Policy, *, site: str = "main", peer: bool = False) -> list[dict]:
    """ClusterRole rules, one per (api group, resource), verbs in a stable order: the
    operator running at ``site``, or (``peer``) the other site's operator reading this one."""
    if peer:
        perms = permissions(policy, site="backup")
    elif site == "backup":
        perms = with_permissions(permissions(policy))
    else:
        perms = permissions(policy)
    rules = []
    for (group, resource), verbs in sorted(perms.items()):
        rules.append({"apiGroups": [group], "resources": [resource],
                      "verbs": [v for v in VERB_ORDER if v in verbs]})
    return rules


def _labels() -> dict[str, str]:
    return {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "dr-kit"}


def render(policy: Policy | None = None, *, namespace: str = DEFAULT_NAMESPACE,
           image: str = DEFAULT_IMAGE, backup_secret: str | None = None,
           backup_context: str = "backup", site: str = "main",
           health_port: int = DEFAULT_HEALTH_PORT) -> list[dict[str, Any]]:
    """The manifests as dicts, in apply order."""
    policy = policy or Policy()
    if not 1 <= health_port <= 65535:
        raise InvalidInput(f"health port {health_port} is not in 1..65535")
    if site not in ("main", "backup"):
        raise InvalidInput(f"site {site!r}: choose main or backup")
    args = ["run", "--in-cluster", "--policy", POLICY_PATH,
            "--serve", f"0.0.0.0:{health_port}"]
    if site == "backup":
        args += ["--site", "backup"]
    volumes: list[dict] = [{"name": "policy", "configMap": {"name": f"{NAME}-policy"}}]
    mounts: list[dict] = [{"name": "policy", "mountPath": "/etc/dr-kit", "readOnly": True}]
    if backup_secret:
        args += ["--backup-kubeconfig", f"{BACKUP_KUBECONFIG_DIR}/kubeconfig",
                 "--backup-context", backup_context]
        volumes.append({"name": "backup-kubeconfig", "secret": {"secretName": backup_secret}})
        mounts.append({"name": "backup-kubeconfig", "mountPath": BACKUP_KUBECONFIG_DIR,
                       "readOnly": True})
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": NAME, "namespace": namespace, "labels": _labels()},
        "spec": {
            "replicas": 1,  # one writer; Recreate so two never overlap
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app.kubernetes.io/name": NAME}},
            "template": {
                "metadata": {"labels": _labels(), "annotations": {
                    "prometheus.io/scrape": "true", "prometheus.io/port": str(health_port),
                    "prometheus.io/path": "/metrics"}},
                "spec": {
                    "serviceAccountName": NAME,
                    "securityContext": {"runAsNonRoot": True,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "operator", "image": image,
                        # the operator's commands alone: a lean process (see __main__)
                        "command": list(COMMAND), "args": args,
                        "ports": [{"name": "health", "containerPort": health_port,
                                   "protocol": "TCP"}],
                        # liveness catches the catastrophic cases (a dead thread, a hung
                        # watch); progress is measured by the metrics, not by probes
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "health"},
                                          "initialDelaySeconds": 10, "periodSeconds": 20,
                                          "timeoutSeconds": 5, "failureThreshold": 3},
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "health"},
                                           "periodSeconds": 10, "timeoutSeconds": 5,
                                           "failureThreshold": 3},
                        "resources": {"requests": {"cpu": "50m", "memory": "96Mi"},
                                      "limits": {"memory": "256Mi"}},
                        "securityContext": {"allowPrivilegeEscalation": False,
                                            "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": mounts,
                    }],
                    "volumes": volumes,
                },
            },
        },
    }
    config = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": f"{NAME}-policy", "namespace": namespace, "labels": _labels()},
        "data": {"policy.yaml": yaml.safe_dump(policy.to_dict(), sort_keys=True)},
    }
    ns = {"apiVersion": "v1", "kind": "Namespace",
          "metadata": {"name": namespace, "labels": _labels()}}
    docs = [ns, _service_account(namespace, NAME), config,
            *_role_and_binding(policy, namespace, site, NAME), deployment]
    if site == "backup":  # the main site's operator reads this site as this identity
        docs[2:2] = [_service_account(namespace, PEER_NAME),
                     *_role_and_binding(policy, namespace, site, PEER_NAME, peer=True)]
    return docs


def _service_account(namespace: str, name: str) -> dict:
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": namespace, "labels": _labels()}}


def _role_and_binding(policy: Policy, namespace: str, site: str, name: str,
                      peer: bool = False) -> list[dict]:
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": name, "labels": _labels()},
            "rules": rbac_rules(policy, site=site, peer=peer)}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": name, "labels": _labels()},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                           "name": name},
               "subjects": [{"kind": "ServiceAccount", "name": name,
                             "namespace": namespace}]}
    return [role, binding]


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None  # the policy file stays readable in the ConfigMap
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render_yaml(policy: Policy | None = None, **kw: Any) -> str:
    return yaml.dump_all(render(policy, **kw), Dumper=_Dumper, sort_keys=False)


__all__ = ["DEFAULT_HEALTH_PORT", "DEFAULT_IMAGE", "DEFAULT_NAMESPACE", "PEER_NAME", "rbac_rules",
           "render",
           "render_yaml"]
