"""The cluster model (_utils/pgcluster_model.py): one tree, every key typed, errors that name the
key, the defaults and pillar.example in step, and the checks across keys."""

from __future__ import annotations

import copy
import re
import subprocess

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import REPO
from tests.unit.conftest import CLUSTER_PILLAR, DEFAULTS, build, model, render

LEAVES = dict(model.leaves())
# Members and web hosts have no default: pillar/cluster.sls lists them.
REQUIRED = {("members",), ("web",)}


def nested(path: tuple, value) -> dict:
    for key in reversed(path):
        value = {key: value}
    return value


def pillar_with(path: tuple, value) -> dict:
    """pillar/cluster.sls with one key set to value (the key's siblings keep their defaults)."""
    pillar = copy.deepcopy(CLUSTER_PILLAR)
    target = pillar
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value
    return pillar


def test_the_repo_pillar_gives_the_original_tasks_cluster(cfg):
    assert cfg["name"] == "pg-cluster-skynet"
    assert cfg["member_names"] == ["postgres-srv1", "postgres-srv2", "postgres-srv3"]
    assert cfg["web_names"] == ["web"]
    assert cfg["bootstrap_member"] == "postgres-srv1"
    # etcd's TLS is on by default: peers and clients speak https.
    assert cfg["etcd"]["initial_cluster"] == (
        "postgres-srv1=https://10.0.0.11:2380,postgres-srv2=https://10.0.0.12:2380,"
        "postgres-srv3=https://10.0.0.13:2380")
    assert cfg["etcd"]["endpoints"] == ["10.0.0.11:2379", "10.0.0.12:2379", "10.0.0.13:2379"]
    assert cfg["etcd"]["urls"]["postgres-srv2"] == "https://10.0.0.12:2379"
    assert cfg["etcd"]["prefix"] == "/service/pg-cluster-skynet/"
    # Quorum commit by default: any one of the two replicas acknowledges a commit.
    assert (cfg["patroni"]["synchronous_mode"], cfg["patroni"]["synchronous_node_count"]) == ("quorum", 1)
    assert cfg["backend_port"] == 6432  # PgBouncer is on by default


def test_an_even_member_count_works_with_a_warning_that_says_what_it_costs():
    assert build({})["warnings"] == []
    four = build({"members": {**CLUSTER_PILLAR["members"], "postgres-srv4": {"address": "10.0.0.14"}}})
    assert four["member_names"][-1] == "postgres-srv4"
    assert four["warnings"] == [
        "pgcluster:members: 4 members, an even number: etcd's quorum is 3, so it survives 1 "
        "down, as 3 members do; 5 would survive 2"]


def test_quorum_commit_is_chosen_with_its_standby_count_and_reaches_patronis_config():
    cfg = build({"patroni": {"synchronous_mode": "quorum", "synchronous_node_count": 2}})
    dcs = render.dcs_config(cfg)
    assert (dcs["synchronous_mode"], dcs["synchronous_node_count"]) == ("quorum", 2)
    # Asynchronous replication counts no standbys: any count is left alone.
    assert build({"patroni": {"synchronous_mode": False, "synchronous_node_count": 9}})


def test_etcd_without_tls_is_plain_http_for_peers_and_clients():
    cfg = build({"etcd": {"tls": False}})
    assert cfg["etcd"]["initial_cluster"].startswith("postgres-srv1=http://10.0.0.11:2380,")
    assert cfg["etcd"]["urls"]["postgres-srv1"] == "http://10.0.0.11:2379"
    # postgres's certificate copies are still made for PostgreSQL and Patroni's REST API...
    assert cfg["postgresql"]["tls_copies"] is True
    # ...and only when nothing needs them are they left out.
    off = {"postgresql": {"tls": False}, "patroni": {"tls": False}, "etcd": {"tls": False}}
    assert build(off)["postgresql"]["tls_copies"] is False


def test_every_key_has_a_default_and_a_type():
    # Every key of the schema is in some component's defaults.yaml (but the hosts)...
    for path in LEAVES:
        if path in REQUIRED:
            continue
        value = DEFAULTS
        for key in path:
            assert key in value, f"{model.where(path)} has no default in any salt/*/defaults.yaml"
            value = value[key]
    # ...and every default is a key of the schema, of its type (the defaults pass the checks).
    model.SCHEMA.check({**DEFAULTS, "members": CLUSTER_PILLAR["members"],
                        "web": CLUSTER_PILLAR["web"]}, ())


def _leaf_values(tree: dict, path=()):
    for path_, _ in LEAVES.items():
        value = tree
        for key in path_:
            value = value[key]
        yield path_, value


def test_pillar_example_lists_every_key_with_its_default():
    example = yaml.safe_load((REPO / "pillar" / "pillar.example").read_text())["pgcluster"]
    model.build(example, DEFAULTS)  # it is a valid cluster as it stands
    for path, value in _leaf_values(example):
        if path in REQUIRED:
            continue
        default = DEFAULTS
        for key in path:
            default = default[key]
        assert value == default, (f"pillar.example says {model.where(path)}: {value!r}, "
                                  f"the defaults say {default!r}")
    assert set(example) == set(model.SCHEMA.fields)


def test_pillar_values_replace_defaults_and_maps_add_to_them():
    cfg = build({"patroni": {"ttl": 30}, "postgresql": {"parameters": {"work_mem": "8MB"}},
                 "haproxy": {"check": {"inter": "1s"}}})
    assert cfg["patroni"]["ttl"] == 30 and cfg["patroni"]["loop_wait"] == 2
    assert cfg["postgresql"]["parameters"]["work_mem"] == "8MB"
    assert cfg["postgresql"]["parameters"]["max_connections"] == 200
    assert cfg["haproxy"]["check"] == {**DEFAULTS["haproxy"]["check"], "inter": "1s"}


# --- Any single bad value names its key ----------------------------------------------------

NOT_A_MAPPING = st.one_of(st.none(), st.booleans(), st.integers(), st.text(), st.lists(st.integers()))
ANYTHING = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text()),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6)


def invalid(kind) -> st.SearchStrategy:  # noqa: PLR0911 - one branch per type
    """Values that kind must refuse."""
    if isinstance(kind, model.Bool):
        return ANYTHING.filter(lambda v: not isinstance(v, bool))
    if isinstance(kind, model.BoolOr):
        return st.one_of(ANYTHING.filter(lambda v: not isinstance(v, bool) and v not in kind.words),
                         st.sampled_from(["on", "yes", "Quorum"]))
    if isinstance(kind, model.Int):
        assert kind.minimum is not None and kind.maximum is not None, "every number is bounded"
        return st.one_of(
            ANYTHING.filter(lambda v: isinstance(v, bool) or not isinstance(v, int)),
            st.integers(max_value=kind.minimum - 1), st.integers(min_value=kind.maximum + 1),
            st.just(str(kind.minimum)))  # "20": a number in a string is not a number
    if isinstance(kind, model.Str):
        return st.one_of(ANYTHING.filter(lambda v: not isinstance(v, str)),
                         st.text().filter(lambda v: not kind.pattern.fullmatch(v)))
    if isinstance(kind, model.Enum):
        return ANYTHING.filter(lambda v: isinstance(v, bool) or v not in kind.values)
    if isinstance(kind, model.IPv4 | model.Network | model.HostPort):
        return st.one_of(ANYTHING.filter(lambda v: not isinstance(v, str)),
                         st.sampled_from(["10.0.0.300", "office", "", "10.0.0.1/33", "::1",
                                          "10.0.0.1:0", "10.0.0.1 ", "10.0.0.1\n"]))
    if isinstance(kind, model.Moment):
        return st.one_of(ANYTHING.filter(lambda v: not isinstance(v, str)),
                         st.sampled_from(["2026-12-03 16:00", "2026-12-03T16:00:00", "yesterday",
                                          "2026-13-01T00:00:00Z", ""]))
    if isinstance(kind, model.Scalar):
        return st.one_of(st.none(), st.lists(st.integers(), min_size=1),
                         st.dictionaries(st.text(), st.integers(), min_size=1))
    if isinstance(kind, model.Optional):
        return invalid(kind.inner).filter(lambda v: v is not None)
    if isinstance(kind, model.List):
        return st.one_of(ANYTHING.filter(lambda v: not isinstance(v, list)),
                         invalid(kind.item).map(lambda v: [v]))
    if isinstance(kind, model.Map):
        return st.one_of(
            NOT_A_MAPPING,
            invalid(kind.value).map(lambda v: {"postgres-srv1": v}),
            st.just({"bad key!": {"address": "10.0.0.99"}}))
    if isinstance(kind, model.Record):
        return st.one_of(
            NOT_A_MAPPING, st.just({"tll": 1}),
            st.sampled_from(sorted(kind.fields.items())).flatmap(
                lambda field: invalid(field[1]).map(lambda v: {field[0]: v})))
    raise AssertionError(f"no invalid values for {kind!r}")


def _error_names(error: Exception, path: tuple) -> bool:
    message = str(error)
    return message.startswith(f"pillar {model.where(path)}") and "Traceback" not in message


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data())
def test_any_single_bad_value_is_refused_naming_its_key(data):
    path = data.draw(st.sampled_from(sorted(LEAVES)), label="key")
    value = data.draw(invalid(LEAVES[path]), label="value")
    if path == ("members",) and isinstance(value, dict) and len(value) == 1:
        # One member is a valid cluster shape; its entry's values are what is being broken.
        value = {**CLUSTER_PILLAR["members"], **value}
    with pytest.raises(model.PillarError) as error:
        model.build(pillar_with(path, value), DEFAULTS)
    assert _error_names(error.value, path), (path, value, str(error.value))


@pytest.mark.parametrize("path", sorted({p[:i] for p in LEAVES for i in range(len(p))}
                                        - {("members",), ("web",)}))
def test_an_unknown_key_is_refused_at_every_depth(path):
    with pytest.raises(model.PillarError) as error:
        model.build({**copy.deepcopy(CLUSTER_PILLAR), **nested((*path, "tll"), 1)}, DEFAULTS)
    assert str(error.value).startswith(f"pillar {model.where((*path, 'tll'))}: unknown key")


def test_a_typo_gets_a_suggestion():
    with pytest.raises(model.PillarError, match=re.escape(
            "pillar pgcluster:patorni: unknown key (did you mean patroni?)")):
        build({"patorni": {}})


def test_a_key_left_empty_is_an_error_not_the_default():
    # `ttl:` with no value is None in YAML: refused, not silently 20.
    with pytest.raises(model.PillarError, match=r"^pillar pgcluster:patroni:ttl: None"):
        build({"patroni": {"ttl": None}})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"members": {**CLUSTER_PILLAR["members"], "postgres-srv3": {"address": "10.0.0.11"}}},
         "pillar pgcluster:members:postgres-srv3:address: 10.0.0.11 is already the address of "
         "pgcluster:members:postgres-srv1"),
        ({"web": {"web": {"address": "10.0.0.12"}}},
         "pillar pgcluster:web:web:address: 10.0.0.12 is already the address of "
         "pgcluster:members:postgres-srv2"),
        ({"members": {n: CLUSTER_PILLAR["members"][n] for n in ("postgres-srv1", "postgres-srv2")}},
         "pillar pgcluster:members: 2 members: etcd runs on each and needs at least 3"),
        ({"members": {**CLUSTER_PILLAR["members"], "postgres-srv2": {}}},
         "pillar pgcluster:members:postgres-srv2:address: missing"),
        ({"web": {"postgres-srv1": {"address": "10.0.0.20"}}},
         "pillar pgcluster:web:postgres-srv1: is also a database member"),
        ({"patroni": {"loop_wait": 10, "retry_timeout": 10}},
         "pillar pgcluster:patroni:ttl: 20 is less than loop_wait (10) + 2 * retry_timeout (10) = 30"),
        ({"patroni": {"synchronous_mode": "quorum", "synchronous_node_count": 3}},
         "pillar pgcluster:patroni:synchronous_node_count: 3 standbys, but 3 members have only 2 "
         "replicas"),
        ({"patroni": {"tags": {"postgres-srv9": {"nofailover": True}}}},
         "pillar pgcluster:patroni:tags:postgres-srv9: unknown member"),
        ({"etcd": {"client_port": 5432}},
         "pillar pgcluster:etcd:client_port: port 5432 is already pgcluster:postgresql:port"),
        ({"pgbouncer": {"port": 8008}},
         "pillar pgcluster:pgbouncer:port: port 8008 is already pgcluster:patroni:restapi_port"),
        ({"haproxy": {"replica_port": 5000}},
         "pillar pgcluster:haproxy:replica_port: port 5000 is already pgcluster:haproxy:primary_port"),
        ({"webapp": {"bind": "127.0.0.1:7000"}},
         "pillar pgcluster:webapp:bind: port 7000 is already pgcluster:haproxy:stats_port"),
        ({"firewall": {"enabled": "false"}},
         "pillar pgcluster:firewall:enabled: 'false' is not allowed: true or false"),
        ({"pgbouncer": {"pool_mode": "bogus"}},
         "pillar pgcluster:pgbouncer:pool_mode: 'bogus' is not allowed: one of 'session'"),
        ({"haproxy": {"replica_max_lag": "ten"}},
         "pillar pgcluster:haproxy:replica_max_lag: 'ten' is not allowed: a whole number"),
        ({"firewall": {"admin_sources": ["192.168.1.0/24", "office"]}},
         "pillar pgcluster:firewall:admin_sources:1: 'office' is not allowed: an IPv4 network"),
        ({"tls": {"days": 90}},
         "pillar pgcluster:tls:renew_days: 132 is not less than days (90): every state.apply"),
        ({"tls": {"issued_after": "2026-12-03 16:00"}},
         "pillar pgcluster:tls:issued_after: '2026-12-03 16:00' is not allowed: a moment with its "
         "time zone, ISO 8601, such as 2026-12-03T16:00:00Z, or null"),
        ({"tls": {"issued_after": "yesterday"}},
         "pillar pgcluster:tls:issued_after: 'yesterday' is not allowed: a moment with its time zone"),
        ({"tls": {"ca": {"certificate": "/srv/pki/ca.crt"}}},
         "pillar pgcluster:tls:ca: give the CA's key or a sign_command, one of the two"),
        ({"tls": {"ca": {"certificate": "/srv/pki/ca.crt", "key": "/srv/pki/ca.key",
                         "sign_command": ["/usr/local/sbin/sign-host"]}}},
         "pillar pgcluster:tls:ca: give the CA's key or a sign_command, one of the two"),
        ({"tls": {"ca": {"key": "/srv/pki/ca.key"}}},
         "pillar pgcluster:tls:ca:certificate: missing: it is required"),
        ({"tls": {"ca": {"certificate": "/srv/pki/ca.crt", "sign_comand": ["sign"]}}},
         "pillar pgcluster:tls:ca:sign_comand: unknown key (did you mean sign_command?)"),
        ({"tls": {"ca": {"certificate": "/srv/pki/ca.crt", "sign_command": "sign-host -p x"}}},
         "pillar pgcluster:tls:ca:sign_command: 'sign-host -p x' is not allowed: a list of"),
        # Monitoring: what Prometheus or Alertmanager would refuse, or run wrongly with.
        ({"monitoring": {"retention": "30m1h"}},
         "pillar pgcluster:monitoring:retention: '30m1h' is not allowed: a duration such as"),
        ({"monitoring": {"scrape_interval": "5m"}},
         "pillar pgcluster:monitoring:scrape_interval: '5m' is not allowed: from 1s to 1m"),
        ({"monitoring": {"host": "elsewhere", "enabled": False}},
         "pillar pgcluster:monitoring:host: 'elsewhere' is neither a member nor a web host"),
        ({"monitoring": {"alerts": {"archive_age": 100}}},
         "pillar pgcluster:monitoring:alerts:archive_age: 100 is less than twice "
         "pgcluster:pgbackrest:archive_timeout (60)"),
        ({"monitoring": {"receivers": {"email": {"to": "a@example.net", "from": "b@example.net",
                                                 "smarthost": "smtp.example.net:587",
                                                 "auth_password_file": "smtp-password"}}}},
         "pillar pgcluster:monitoring:receivers:email:auth_username: missing"),
        ({"monitoring": {"receivers": {"webhook": "http://hooks.example.net:70000/x"}}},
         "pillar pgcluster:monitoring:receivers:webhook: 'http://hooks.example.net:70000/x' is "
         "not allowed"),
        ({"monitoring": {"host": "postgres-srv1", "ports": {"prometheus": 8008}}},
         "pillar pgcluster:monitoring:ports:prometheus: port 8008 is already "
         "pgcluster:patroni:restapi_port on a database member"),
    ],
)
def test_what_no_single_key_can_tell_is_checked_across_keys(override, message):
    with pytest.raises(model.PillarError) as error:
        build(override)
    assert str(error.value).startswith(message), str(error.value)


def test_the_users_ca_is_taken_as_given_and_none_means_the_masters_own():
    assert build({})["tls"]["ca"] is None
    ca = {"certificate": "generated/org-ca/ca.crt", "key": "generated/org-ca/ca.key"}
    assert build({"tls": {"ca": ca}})["tls"]["ca"] == ca


def test_a_rotation_moment_is_taken_as_yaml_parses_it_or_as_a_string_in_utc():
    parsed = yaml.safe_load("issued_after: 2026-12-03T19:00:00+03:00")["issued_after"]
    assert build({"tls": {"issued_after": parsed}})["tls"]["issued_after"] == "2026-12-03T16:00:00+00:00"
    assert build({"tls": {"issued_after": "2026-12-03T16:00:00Z"}})["tls"]["issued_after"] == \
        "2026-12-03T16:00:00+00:00"
    assert build({})["tls"]["issued_after"] is None


def test_without_pgbouncer_its_port_may_be_reused_and_haproxy_targets_postgresql():
    cfg = build({"pgbouncer": {"enabled": False, "port": 5432}})
    assert cfg["backend_port"] == 5432


@pytest.mark.parametrize("path", ["/var/lib/postgresql", "/srv/pg-data", "/.x/y", "/srv/pg data/é"])
def test_the_mount_unit_is_named_as_systemd_escape_names_it(path):
    escaped = subprocess.run(["systemd-escape", "--path", "--suffix=mount", path], check=True,
                             capture_output=True, text=True).stdout.strip()
    assert model.mount_unit_name(path) == escaped


def test_a_data_disk_takes_its_device_and_keeps_the_defaults():
    cfg = build({"postgresql": {"data_disk": {"device": "/dev/disk/by-id/virtio-pgdata"}}})
    assert cfg["postgresql"]["data_disk"] == {**DEFAULTS["postgresql"]["data_disk"],
                                              "device": "/dev/disk/by-id/virtio-pgdata"}
    assert cfg["postgresql"]["mount_unit"] == "var-lib-postgresql.mount"
    bare = model.build({"members": CLUSTER_PILLAR["members"], "web": CLUSTER_PILLAR["web"]}, DEFAULTS)
    assert bare["postgresql"]["data_disk"]["device"] is None  # the system disk by default
