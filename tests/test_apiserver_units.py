"""Unit tests of the fake API server's pure pieces (no HTTP).

Each test names the upstream behaviour it pins: RFC 7386 / RFC 6902 for the
generic patches, k8s.io/apimachinery strategicpatch for strategic merge, and
k8s.io/apimachinery labels/fields for selectors. The end-to-end contract
through the official client is in tests/test_apiserver.py.
"""

from __future__ import annotations

import pytest

from rollout.testing.apiserver.errors import ApiError
from rollout.testing.apiserver.patch import (JsonPatchError, PatchFormatError, json_patch,
                                             merge_patch, strategic_merge_patch)
from rollout.testing.apiserver.selectors import (get_path, label_selector_string,
                                                 parse_field_selector, parse_label_selector)
from rollout.testing.apiserver.store import Store


# --------------------------------------------------------------- RFC 7386

@pytest.mark.parametrize("target,patch,expected", [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
])
def test_merge_patch_rfc7386_examples(target, patch, expected):
    """RFC 7386 appendix A: maps merge, null deletes, everything else replaces."""
    assert merge_patch(target, patch) == expected


# --------------------------------------------------------------- RFC 6902

def test_json_patch_all_operations():
    """RFC 6902 add/remove/replace/move/copy/test, '-' appends, ~1 escapes '/'."""
    doc = {"a": {"b": [1, 2]}, "x/y": 1}
    out = json_patch(doc, [
        {"op": "add", "path": "/a/b/-", "value": 3},
        {"op": "add", "path": "/a/b/0", "value": 0},
        {"op": "replace", "path": "/x~1y", "value": 2},
        {"op": "copy", "from": "/a/b", "path": "/c"},
        {"op": "move", "from": "/c", "path": "/d"},
        {"op": "remove", "path": "/a/b/1"},
        {"op": "test", "path": "/d", "value": [0, 1, 2, 3]},
    ])
    assert out == {"a": {"b": [0, 2, 3]}, "x/y": 2, "d": [0, 1, 2, 3]}
    assert doc == {"a": {"b": [1, 2]}, "x/y": 1}, "input must not be mutated"


@pytest.mark.parametrize("ops", [
    [{"op": "test", "path": "/a", "value": 2}],
    [{"op": "test", "path": "/missing", "value": 1}],
    [{"op": "test", "path": "/a", "value": True}],  # 1 is not true in JSON
    [{"op": "replace", "path": "/missing", "value": 1}],
    [{"op": "remove", "path": "/missing"}],
    [{"op": "add", "path": "/no/such/parent", "value": 1}],
])
def test_json_patch_failures_raise(ops):
    """Failed tests and missing paths abort the whole patch (-> 422 upstream)."""
    with pytest.raises(JsonPatchError):
        json_patch({"a": 1}, ops)


def test_json_patch_malformed_is_format_error():
    """A non-list / unknown op is a decoding error (-> 400 upstream)."""
    with pytest.raises(PatchFormatError):
        json_patch({}, {"op": "add"})
    with pytest.raises(PatchFormatError):
        json_patch({}, [{"op": "frobnicate", "path": "/a"}])


# --------------------------------------------------------------- strategic merge

def _pod(*containers):
    return {"spec": {"template": {"spec": {"containers": list(containers)}}}}


def test_smp_merges_containers_env_ports_by_key():
    """patchMergeKey: containers/env by name, container ports by containerPort."""
    orig = _pod({"name": "app", "image": "a:1", "env": [{"name": "A", "value": "1"}],
                 "ports": [{"containerPort": 80, "name": "http"}]},
                {"name": "sidecar", "image": "s:1"})
    patch = _pod({"name": "app", "image": "a:2", "env": [{"name": "B", "value": "2"}],
                  "ports": [{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 9090}]})
    out = strategic_merge_patch(orig, patch)
    app, sidecar = out["spec"]["template"]["spec"]["containers"]
    assert app["image"] == "a:2"
    assert app["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert app["ports"] == [{"containerPort": 80, "name": "http", "protocol": "TCP"},
                            {"containerPort": 9090}]
    assert sidecar == {"name": "sidecar", "image": "s:1"}


def test_smp_service_ports_merge_on_port_and_volumes_on_name():
    """Service ports merge on `port`; pod volumes on `name`."""
    svc = {"spec": {"ports": [{"port": 80, "targetPort": 8080}]}}
    out = strategic_merge_patch(svc, {"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443}]}})
    assert out["spec"]["ports"] == [{"port": 80, "targetPort": 8080, "name": "http"}, {"port": 443}]
    pod = {"spec": {"volumes": [{"name": "a", "emptyDir": {}}, {"name": "b", "emptyDir": {}}]}}
    out = strategic_merge_patch(pod, {"spec": {"volumes": [{"name": "b", "configMap": {"name": "x"}}]}})
    assert out["spec"]["volumes"][1] == {"name": "b", "emptyDir": {}, "configMap": {"name": "x"}}


def test_smp_patch_directives():
    """$patch delete/replace on list items and maps, $retainKeys,
    $setElementOrder, $deleteFromPrimitiveList, null deletes."""
    orig = _pod({"name": "a", "image": "a", "env": [{"name": "X", "value": "1"}]},
                {"name": "b", "image": "b"})
    out = strategic_merge_patch(orig, _pod({"name": "b", "$patch": "delete"}))
    assert [c["name"] for c in out["spec"]["template"]["spec"]["containers"]] == ["a"]

    out = strategic_merge_patch(orig, _pod({"name": "c", "image": "c"}, {"$patch": "replace"}))
    assert out["spec"]["template"]["spec"]["containers"] == [{"name": "c", "image": "c"}]

    out = strategic_merge_patch({"metadata": {"labels": {"a": "1", "b": "2"}}},
                                {"metadata": {"labels": {"$patch": "replace", "c": "3"}}})
    assert out["metadata"]["labels"] == {"c": "3"}

    out = strategic_merge_patch({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}},
                                {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}})
    assert out["spec"]["strategy"] == {"type": "Recreate"}

    out = strategic_merge_patch(orig, {"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}]}}}})
    assert [c["name"] for c in out["spec"]["template"]["spec"]["containers"]] == ["b", "a"]

    out = strategic_merge_patch({"metadata": {"finalizers": ["x", "y"]}},
                                {"metadata": {"finalizers": ["z"]}})
    assert out["metadata"]["finalizers"] == ["x", "y", "z"], "finalizers merge (patchStrategy merge)"
    out = strategic_merge_patch({"metadata": {"finalizers": ["x", "y"]}},
                                {"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}})
    assert out["metadata"]["finalizers"] == ["y"]

    out = strategic_merge_patch({"spec": {"args": ["a", "b"], "x": 1}}, {"spec": {"args": ["c"], "x": None}})
    assert out == {"spec": {"args": ["c"]}}, "atomic lists are replaced, null deletes"


def test_smp_missing_merge_key_is_rejected():
    """An element without its merge key cannot be merged."""
    with pytest.raises(PatchFormatError, match="merge key"):
        strategic_merge_patch(_pod({"name": "a"}), _pod({"image": "x"}))


# --------------------------------------------------------------- selectors

LABELS = {
    "a": {"app": "web", "tier": "front"},
    "b": {"app": "api", "tier": "back"},
    "c": {"app": "db"},
    "d": {},
}


@pytest.mark.parametrize("selector,expected", [
    ("app=web", {"a"}),
    ("app==web", {"a"}),
    ("app!=web", {"b", "c", "d"}),  # != matches objects without the key
    ("app in (web,api)", {"a", "b"}),
    ("app notin (web)", {"b", "c", "d"}),  # notin too
    ("tier", {"a", "b"}),
    ("!tier", {"c", "d"}),
    ("app in (web, api),tier!=back", {"a"}),
    ("app,!tier", {"c"}),
    ("", {"a", "b", "c", "d"}),
])
def test_label_selector_semantics(selector, expected):
    """labels.Parse: every operator, comma = AND, != and notin match absent keys."""
    sel = parse_label_selector(selector)
    assert {n for n, l in LABELS.items() if sel.matches(l)} == expected


@pytest.mark.parametrize("bad", ["app=", "app in ()", "=x", "app in (a", "a b", "app=we b", ",", "x=)"])
def test_label_selector_rejects_garbage(bad):
    """Unparseable selectors are 400 BadRequest, never 'match everything'."""
    if bad == "app=":
        # `app=` is valid upstream: the empty value.
        assert parse_label_selector(bad).matches({"app": ""})
        return
    with pytest.raises(ApiError) as ei:
        parse_label_selector(bad)
    assert ei.value.code == 400


def test_label_selector_string_is_canonical():
    """Scale.status.selector is the selector's canonical string."""
    s = label_selector_string({"matchLabels": {"b": "2", "a": "1"},
                               "matchExpressions": [{"key": "c", "operator": "In", "values": ["y", "x"]}]})
    assert s == "a=1,b=2,c in (x,y)"


def test_field_selector_parsing_and_errors():
    """fields.ParseSelector: =, ==, != ; unknown labels are 400 with upstream's wording."""
    sup = ("metadata.name", "metadata.namespace", "involvedObject.name")
    sel = parse_field_selector("metadata.name=a,involvedObject.name!=x", sup, get_path, False)
    assert sel.matches({"metadata": {"name": "a"}, "involvedObject": {"name": "y"}})
    assert not sel.matches({"metadata": {"name": "a"}, "involvedObject": {"name": "x"}})
    with pytest.raises(ApiError, match="field label not supported: spec.x"):
        parse_field_selector("spec.x=1", sup, get_path, False)
    with pytest.raises(ApiError, match='"spec.x" is not a known field selector'):
        parse_field_selector("spec.x=1", sup[:2], get_path, True)


# --------------------------------------------------------------- store

def test_store_history_is_bounded_and_expires():
    """The watch cache keeps a bounded window; older resourceVersions are 410."""
    st = Store(history_size=3)
    start = st.resource_version
    for i in range(5):
        st.commit("x", "ADDED", {"metadata": {"name": f"o{i}"}}, None)
    with pytest.raises(ApiError) as ei:
        st.events_after(start, ["x"])
    assert ei.value.code == 410 and ei.value.reason == "Expired"
    evs = st.events_after(st.resource_version - 2, ["x"])
    assert [e.obj["metadata"]["name"] for e in evs] == ["o3", "o4"]


def test_server_package_imports_neither_kubernetes_nor_locust():
    """The fake must not share code with the client it tests: importing and
    starting it pulls in neither `kubernetes` nor `locust`."""
    import subprocess
    import sys
    from pathlib import Path
    code = ("import sys; from rollout.testing.apiserver import FakeApiServer; "
            "FakeApiServer().start().stop(); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'locust')]; "
            "assert not bad, bad")
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=60)
