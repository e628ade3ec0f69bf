"""The web page's cluster view: Patroni's REST API, over HTTPS trusting only the cluster's CA
(pgcluster:patroni:tls), served here by the recorded answers of the lab's members."""

from __future__ import annotations

from tests.certificates import issue
from tests.unit.recorded_api import MEMBERS, PATRONI_PORT, RecordedCluster
from tests.webapp.conftest import config, db_app

URLS = [f"https://{address}:{PATRONI_PORT}" for address in MEMBERS.values()]


def _served_over_https(tmp_path) -> tuple[RecordedCluster, str]:
    ca = issue("cluster-ca")
    (tmp_path / "ca.crt").write_bytes(ca[0])
    tls = {name: issue(name, ca, address=address) for name, address in MEMBERS.items()}
    return RecordedCluster("healthy", tls=tls, tmp=tmp_path), str(tmp_path / "ca.crt")


def test_the_cluster_view_reads_patroni_over_https_with_the_clusters_ca(tmp_path):
    servers, ca = _served_over_https(tmp_path)
    try:
        view = db_app.App(config(patroni=URLS, patroni_ca=ca)).cluster()
        assert sorted(m["name"] for m in view["members"]) == sorted(MEMBERS)
        # A CA that is not the cluster's trusts none of them.
        other = tmp_path / "other-ca.crt"
        other.write_bytes(issue("another-ca")[0])
        view = db_app.App(config(patroni=URLS, patroni_ca=str(other))).cluster()
        assert view["members"] == [] and view["error"] == "no Patroni REST API answered"
    finally:
        servers.close()


def test_a_missing_ca_is_named_in_the_view_not_a_server_error(tmp_path):
    view = db_app.App(config(patroni=URLS, patroni_ca=str(tmp_path / "ca.crt"))).cluster()
    assert view["members"] == [] and str(tmp_path / "ca.crt") in view["error"]
