"""Property-based fuzzing of the lab API server over real HTTP (hypothesis).

One server runs on loopback for the module; every example sends one request built from
bad (or by chance valid) parts: bodies of every media type, JSON values with the wrong
types in the right places, NaN/Infinity/huge numbers, deep nesting, patches of every
type, label and field selectors, names and namespaces, query parameters, protobuf bytes.
Each answer must be:

- never a 5xx, and a ``Status`` object for every 4xx;
- with nothing changed after a refusal: the global resourceVersion is the same and the
  seeded objects are byte for byte what they were;
- from a server that still answers (the check itself is a request).

Examples are derandomized (the same inputs every run) and bounded so the file runs in
about a minute; ``DR_KIT_FUZZ_EXAMPLES=N`` raises the count per property and
``DR_KIT_FUZZ_RANDOM=1`` draws new inputs instead of the fixed set. A summary line
(requests, how many refused and with which codes) is printed at the end of the module.
"""

from __future__ import annotations

import collections
import copy
import http.client
import json
import os
import urllib.parse
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dr_kit.lab.apiserver import protobuf, start_in_thread

TOKEN = "fuzz-token"
NS = "fuzz"
EXAMPLES = int(os.environ.get("DR_KIT_FUZZ_EXAMPLES", "150"))
RANDOM = os.environ.get("DR_KIT_FUZZ_RANDOM") == "1"  # new inputs every run, not the fixed set
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not RANDOM, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
TALLY: collections.Counter[tuple[str, int]] = collections.Counter()

CORE = "/api/v1"
APPS = "/apis/apps/v1"
VGR_API = "/apis/replication.storage.openshift.io/v1alpha1"
SEEDS = {  # path of each seeded object -> its creation body
    f"{CORE}/namespaces/{NS}/configmaps/cm": {
        "metadata": {"name": "cm", "labels": {"app": "shop"}, "finalizers": ["lab.io/keep"]},
        "data": {"a": "b"}},
    f"{CORE}/namespaces/{NS}/secrets/pw": {"metadata": {"name": "pw"}, "data": {"k": "eA=="}},
    f"{CORE}/namespaces/{NS}/persistentvolumeclaims/data": {
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}}},
    f"{APPS}/namespaces/{NS}/deployments/web": {
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "nginx",
                                                       "env": [{"name": "A", "value": "1"}]}]}}}},
    f"{VGR_API}/namespaces/{NS}/volumegroupreplications/g": {
        "metadata": {"name": "g"},
        "spec": {"volumeGroupReplicationClassName": "lab-cg", "replicationState": "primary",
                 "source": {"selector": {"matchLabels": {"app": "shop"}}}}},
    f"{CORE}/persistentvolumes/pv-fuzz": {
        "metadata": {"name": "pv-fuzz"},
        "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"},
                 "csi": {"driver": "lab", "volumeHandle": "v1"}}},
}
COLLECTIONS = sorted({p.rsplit("/", 1)[0] for p in SEEDS} | {
    f"{CORE}/namespaces", f"{CORE}/namespaces/{NS}/pods", f"{CORE}/namespaces/{NS}/events",
    f"{CORE}/configmaps", f"{APPS}/deployments",
    "/apis/storage.k8s.io/v1/storageclasses",
    "/apis/groupsnapshot.storage.k8s.io/v1/namespaces/fuzz/volumegroupsnapshots"})


class Client:
    """A keep-alive HTTP client that reconnects after a watch or a dropped connection."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.conn = http.client.HTTPConnection(host, port, timeout=30)
        self.known: tuple[str, dict[str, Any]] | None = None  # (rv, seeds) as last seen

    def request(self, method: str, path: str, body: bytes | None = None,
                ctype: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        if ctype is not None:
            headers["Content-Type"] = ctype
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                if resp.status == 200 and "watch=" in path and method == "GET" and resp.headers.get(
                        "Transfer-Encoding") == "chunked":
                    self.reconnect()  # a live watch: its status is the answer
                    return resp.status, None
                data = resp.read()
                if "json" not in (resp.headers.get("Content-Type") or ""):
                    return resp.status, data
                return resp.status, json.loads(data)
            except (ConnectionError, http.client.HTTPException):
                if attempt == 2:
                    raise
                self.reconnect()
        raise AssertionError("unreachable")

    def reconnect(self) -> None:
        self.conn.close()
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)

    def global_rv(self) -> str:
        status, body = self.request("GET", f"{CORE}/persistentvolumes?labelSelector=no-such")
        assert status == 200, body
        return body["metadata"]["resourceVersion"]

    def seed(self, path: str) -> Any:
        status, body = self.request("GET", path)
        return body if status == 200 else status

    def state(self) -> tuple[str, dict[str, Any]]:
        """The global resourceVersion and every seeded object (re-read after a change)."""
        if self.known is None or self.global_rv() != self.known[0]:
            self.known = (self.global_rv(), {p: self.seed(p) for p in SEEDS})
        return self.known


@pytest.fixture(scope="module")
def api(tmp_path_factory, request, record_testsuite_property):
    handle = start_in_thread(tmp_path_factory.mktemp("fuzz") / "state", TOKEN, tls=False)
    c = Client("127.0.0.1", handle.port)
    assert c.request("POST", f"{CORE}/namespaces", json.dumps(
        {"metadata": {"name": NS}}).encode(), "application/json")[0] == 201
    for path, body in SEEDS.items():
        status, reply = c.request("POST", path.rsplit("/", 1)[0], json.dumps(body).encode(),
                                  "application/json")
        assert status == 201, reply
    yield c
    total = sum(TALLY.values())
    codes: collections.Counter[int] = collections.Counter()
    for (_, code), n in TALLY.items():
        codes[code] += n
    refused = sum(n for c, n in codes.items() if 400 <= c < 500)
    by_code = ", ".join(f"{code}: {codes[code]}" for code in sorted(codes))
    line = (f"API server fuzz: {total} requests, {refused} refused with a 4xx "
            f"Status and nothing changed, {sum(n for c, n in codes.items() if c < 300)} "
            f"accepted, {sum(n for c, n in codes.items() if c >= 500)} 5xx ({by_code})")
    record_testsuite_property("apiserver_fuzz_requests", total)
    record_testsuite_property("apiserver_fuzz_refused", refused)
    record_testsuite_property("apiserver_fuzz_5xx", sum(n for c, n in codes.items() if c >= 500))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # shown without -s, after the dots
            reporter.write_line("")
            reporter.write_line(line)
    handle.stop()


def check(c: Client, label: str, method: str, path: str, body: bytes | None,
          ctype: str | None) -> int:
    """Send one request; assert no 5xx, a Status on refusal and nothing changed by it.

    Every write moves the global resourceVersion, so an unchanged one proves the store
    unchanged; the object the request addressed is also compared, so an in-place change
    that bypassed the store would show too.
    """
    rv, seeds = c.state()
    status, reply = c.request(method, path, body, ctype)
    TALLY[(label, status)] += 1
    assert status < 500, (method, path, body[:300] if body else body, ctype, reply)
    if status >= 400:
        assert isinstance(reply, dict) and reply.get("kind") == "Status", reply
        assert reply["code"] == status and reply["message"], reply
        assert c.global_rv() == rv, (method, path, "a refused request changed the store")
        for seed in SEEDS:
            if path.startswith(seed):
                assert c.seed(seed) == seeds[seed], (method, path, "a refusal changed " + seed)
    return status


# -- strategies ----------------------------------------------------------------------------

text = st.text(max_size=12)
odd_text = st.one_of(
    text, st.sampled_from(["", ".", "..", "a/b", "UPPER", "x" * 300, "a\nb", "\x00", "²", "-",
                           "a,b", "a=b", "\\", "%2F", "\ud800", "lab.io/keep", "web", "cm"]))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=False, allow_infinity=False), odd_text)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(odd_text, inner, max_size=4)),
    max_leaves=12)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _set(obj: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    cur = obj
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = value
    return obj


RAW_VALUES = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "9" * 400, "1" * 5000, "-0",
              "1.0", '"\\ud800"', "[" * 150 + "]" * 150, "{" * 0 + "[]", '{"$patch":"delete"}',
              '"64Mi"', '"1.5Gi"', '"Mi"', '"=1"', "true", "null", '"eA=="', '"not base64!"']


@st.composite
def mutated_object(draw) -> tuple[str, bytes]:
    """A seeded object's body with one to three values replaced by something else."""
    path = draw(st.sampled_from(sorted(SEEDS)))
    obj = copy.deepcopy(SEEDS[path])
    obj["metadata"]["name"] = draw(st.sampled_from(["new-" + path.rsplit("/", 1)[1],
                                                    path.rsplit("/", 1)[1]]))
    raw_marker = None
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(_paths(obj)))
        choice = draw(st.integers(0, 3))
        if choice == 0:
            obj = _set(obj, target, draw(json_values))
        elif choice == 1 and target and isinstance(_get(obj, target[:-1]), dict):
            del _get(obj, target[:-1])[target[-1]]
        elif choice == 2:
            obj = _set(obj, target, [_get(obj, target)])
        else:
            raw_marker = "\x00RAW\x00"
            obj = _set(obj, target, raw_marker)
    text_body = json.dumps(obj)
    if raw_marker:
        text_body = text_body.replace(json.dumps(raw_marker), draw(st.sampled_from(RAW_VALUES)))
    return path.rsplit("/", 1)[0], text_body.encode()


def _get(obj: Any, path: tuple) -> Any:
    for p in path:
        obj = obj[p]
    return obj


meta_values = st.one_of(json_values, st.dictionaries(odd_text, json_values, max_size=3),
                        st.lists(odd_text, max_size=3))


@st.composite
def bad_metadata(draw) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": draw(st.one_of(odd_text, json_values))}
    for key in draw(st.lists(st.sampled_from(
            ["labels", "annotations", "finalizers", "ownerReferences", "namespace",
             "resourceVersion", "generateName", "uid", "creationTimestamp",
             "deletionTimestamp", "managedFields", "generation", "bogus"]), max_size=4)):
        meta[key] = draw(meta_values)
    return meta


MEDIA = ["application/json", "application/yaml", "application/vnd.kubernetes.protobuf",
         "text/plain", "", "application/json; charset=utf-8", "garbage/////", "application/x-yaml",
         "application/merge-patch+json", "application/json-patch+json",
         "application/strategic-merge-patch+json", "application/apply-patch+yaml", None]
PATCH_MEDIA = MEDIA[8:12] + ["application/json", "text/plain", None]
POINTERS = ["", "/", "/metadata", "/metadata/labels", "/metadata/labels/x", "/metadata/finalizers",
            "/metadata/finalizers/0", "/metadata/finalizers/-", "/metadata/finalizers/²",
            "/metadata/finalizers/01", "/metadata/name", "/metadata/namespace", "/spec",
            "/spec/replicas", "/spec/template/spec/containers/0/env/-", "/data/a", "/data",
            "/status", "/kind", "/apiVersion", "/nope/deeper", "~", "/a~2b", "/metadata/labels/a~1b"]
pointers = st.one_of(st.sampled_from(POINTERS), odd_text, json_values)


@st.composite
def json_patches(draw) -> Any:
    ops = []
    for _ in range(draw(st.integers(0, 4))):
        op: dict[str, Any] = {}
        op["op"] = draw(st.one_of(st.sampled_from(
            ["add", "remove", "replace", "move", "copy", "test"]), json_values))
        if draw(st.integers(0, 9)):
            op["path"] = draw(pointers)
        if draw(st.booleans()):
            op["from"] = draw(pointers)
        if draw(st.booleans()):
            op["value"] = draw(json_values)
        ops.append(op)
    return draw(st.sampled_from([ops, ops, ops, {"op": "add"}, ops[:1]]))


DIRECTIVES = ["$patch", "$retainKeys", "$deleteFromPrimitiveList/finalizers",
              "$setElementOrder/containers", "$setElementOrder/env", "$unknown"]


@st.composite
def strategic_patches(draw) -> Any:
    patch = {"metadata": {}, "spec": {"template": {"spec": {}}}}
    for key in draw(st.lists(st.sampled_from(DIRECTIVES), max_size=3)):
        where = draw(st.sampled_from([patch, patch["metadata"], patch["spec"]["template"]["spec"]]))
        where[key] = draw(st.one_of(json_values, st.sampled_from(
            ["replace", "delete", "merge", ["a"], [{"name": "web"}]])))
    if draw(st.booleans()):
        patch["spec"]["template"]["spec"]["containers"] = draw(st.lists(
            st.one_of(json_values, st.fixed_dictionaries(
                {"name": st.sampled_from(["web", "new"]), "image": odd_text},
                optional={"$patch": st.sampled_from(["delete", "replace", "x"]),
                          "env": st.lists(json_values, max_size=2)})), max_size=3))
    if draw(st.booleans()):
        patch["metadata"]["finalizers"] = draw(st.lists(json_values, max_size=3))
    return draw(st.sampled_from([patch, draw(json_values)]))


label_selectors = st.one_of(
    st.text(alphabet="ab=!,() inotx.-/\\_<>1", max_size=20),
    st.sampled_from(["a,,b", "a,", ",", "a in (b", "a in ()", "a notin (x,,y)", "!a", "a>x", "a<1",
                     "a==b,c!=d", "a=" + "b" * 70, "x" * 70, "a b", "in", "a/b/c", "a=b=c"]))
field_selectors = st.one_of(
    st.text(alphabet="metadata.namespcfoe=!,\\ ", max_size=30),
    st.sampled_from(["metadata.name=cm", "metadata.name==cm,", "spec.foo=bar", "status.phase=x",
                     "metadata.name", r"metadata.name=a\x", "metadata.name=a=b", "=x", ",,",
                     "type=Opaque", "metadata.namespace!=fuzz"]))
PARAMS = {
    "watch": ["true", "1", "false", "maybe", "", "TRUE", "2"],
    "timeoutSeconds": ["1", "0", "nan", "-1", "1e3", "99999999999999999999", "", "1.5", "inf"],
    "resourceVersion": ["0", "1", "-5", "abc", "", "99999999", "1" * 30],
    "resourceVersionMatch": ["Exact", "NotOlderThan", "Sometimes", ""],
    "allowWatchBookmarks": ["true", "x"], "sendInitialEvents": ["true", "y"],
    "limit": ["1", "-1", "x", "500"], "continue": ["abc", ""],
    "dryRun": ["All", "Some", ""], "fieldValidation": ["Strict", "Warn", "Ignore", "strict", "x"],
    "fieldManager": ["kubectl", "x" * 200, "\x01"], "force": ["true", "yes"],
    "gracePeriodSeconds": ["0", "soon", "-1"], "propagationPolicy": ["Orphan", "All", ""],
    "orphanDependents": ["true", "x"], "includeObject": ["Object", "All", "None"],
    "pretty": ["true", "x"],
}


@st.composite
def queries(draw) -> str:
    chosen = draw(st.lists(st.sampled_from(sorted(PARAMS)), max_size=4, unique=True))
    pairs = [(k, draw(st.one_of(st.sampled_from(PARAMS[k]), odd_text))) for k in chosen]
    if draw(st.booleans()):
        pairs.append(("labelSelector", draw(label_selectors)))
    if draw(st.booleans()):
        pairs.append(("fieldSelector", draw(field_selectors)))
    if any(k == "watch" for k, _ in pairs):  # keep watches short if they start at all
        pairs = [(k, v) for k, v in pairs if k != "timeoutSeconds"] + [("timeoutSeconds", "1")]
    return urllib.parse.urlencode(pairs, safe="", errors="surrogatepass")


def _quote(name: Any) -> str:
    return urllib.parse.quote(str(name), safe="", errors="surrogatepass")


# -- properties ----------------------------------------------------------------------------


@FUZZ
@given(target=mutated_object(), ctype=st.sampled_from(["application/json", None,
                                                       "application/yaml"]))
def test_create_with_mutated_objects(api, target, ctype):
    collection, body = target
    check(api, "create-mutated", "POST", collection, body, ctype)


@FUZZ
@given(collection=st.sampled_from(COLLECTIONS), meta=bad_metadata(),
       rest=st.dictionaries(st.sampled_from(["spec", "status", "data", "stringData", "type",
                                             "kind", "apiVersion", "binaryData", "x"]),
                            json_values, max_size=3),
       ctype=st.sampled_from(MEDIA))
def test_create_with_bad_metadata_and_fields(api, collection, meta, rest, ctype):
    body = json.dumps({**rest, "metadata": meta}).encode()
    check(api, "create-structure", "POST", collection, body, ctype)


@FUZZ
@given(collection=st.sampled_from(COLLECTIONS),
       body=st.one_of(
           st.binary(max_size=64),
           st.builds(lambda n, k: (b'{"metadata":{"name":"deep"},"data":' + k[0] * n + k[1] * n
                                   + b"}"), st.integers(50, 3000),
                     st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")])),
           st.builds(lambda v: b'{"metadata":{"name":"num"},"spec":{"replicas":' + v.encode()
                     + b"}}", st.sampled_from(RAW_VALUES)),
           st.builds(lambda b: protobuf.MAGIC + b, st.binary(max_size=64)),
           st.builds(lambda y: y.encode(), st.sampled_from([
               "metadata: {name: y, annotations: {t: 2024-01-01}}", "a: .nan", "a: !!binary aGk=",
               "a: &a [1]\nb: *a", "- 1\n- 2", "{1: 2}", "a: [", "---\n---", "? [a]\n: 1"]))),
       ctype=st.sampled_from(MEDIA))
def test_create_with_raw_bodies(api, collection, body, ctype):
    check(api, "create-raw", "POST", collection, body, ctype)


PATCH_TARGETS = sorted(SEEDS)


@FUZZ
@given(path=st.sampled_from(PATCH_TARGETS), status=st.booleans(),
       kind_body=st.one_of(
           st.tuples(st.just("application/json-patch+json"), json_patches()),
           st.tuples(st.just("application/merge-patch+json"), json_values),
           st.tuples(st.just("application/strategic-merge-patch+json"), strategic_patches()),
           st.tuples(st.sampled_from(PATCH_MEDIA), json_values)),
       query=queries())
def test_patches_of_every_type(api, path, status, kind_body, query):
    ctype, body = kind_body
    url = path + ("/status" if status else "") + ("?" + query if query else "")
    check(api, "patch", "PATCH", url, json.dumps(body).encode(), ctype)


@FUZZ
@given(path=st.sampled_from(PATCH_TARGETS), mutated=mutated_object(), query=queries())
def test_updates_with_mutated_objects(api, path, mutated, query):
    _, body = mutated
    check(api, "update", "PUT", path + ("?" + query if query else ""), body, "application/json")


@FUZZ
@given(collection=st.sampled_from(COLLECTIONS), query=queries())
def test_lists_watches_and_selectors(api, collection, query):
    check(api, "list", "GET", collection + ("?" + query if query else ""), None, None)


@FUZZ
@given(method=st.sampled_from(["GET", "DELETE", "PUT", "PATCH", "POST"]),
       segments=st.lists(st.one_of(odd_text, st.sampled_from(
           ["api", "apis", "v1", "namespaces", NS, "configmaps", "apps", "status", "finalize",
            "deployments", "cm", "web", "persistentvolumes", "openapi", "v2", "v3", "version"])),
           min_size=1, max_size=7),
       body=st.one_of(st.none(), st.builds(lambda v: json.dumps(v).encode(), json_values)),
       ctype=st.sampled_from(MEDIA))
def test_names_namespaces_and_paths(api, method, segments, body, ctype):
    path = "/" + "/".join(_quote(s) for s in segments)
    if method == "DELETE":  # deleting the namespace or a seed is valid: keep them for the others
        path += "?dryRun=All"
    check(api, "paths", method, path, body, ctype)


@FUZZ
@given(name=odd_text, options=st.one_of(json_values, st.fixed_dictionaries({}, optional={
    "preconditions": json_values, "propagationPolicy": json_values, "dryRun": json_values,
    "gracePeriodSeconds": json_values, "orphanDependents": json_values})),
       ctype=st.sampled_from(MEDIA), query=queries())
def test_deletes_with_bad_options(api, name, options, ctype, query):
    path = f"{CORE}/namespaces/{NS}/configmaps/{_quote(name)}"
    if name.strip() in ("cm", ""):  # an empty name deletes the collection
        path += "?dryRun=All" + ("&" + query if query else "")
    elif query:
        path += "?" + query
    check(api, "delete", "DELETE", path, json.dumps(options).encode(), ctype)


def test_server_still_serves_everything_it_did(api):
    assert api.request("GET", "/healthz")[0] == 200
    for collection in COLLECTIONS:  # whatever was accepted can be read back as plain JSON
        status, body = api.request("GET", collection)
        assert status == 200 and json.dumps(body, allow_nan=False), collection
    for path in SEEDS:  # the seeds were only patched, never deleted
        assert api.request("GET", path)[0] == 200, path
    assert sum(TALLY.values()) > 0
