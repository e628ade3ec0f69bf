"""The app with no proxy (pgcluster:webapp:data_path: libpq): its writer and reader are one
multi-host string over a real primary and a real hot standby of it, the standby listed first,
and libpq finds the writer (target_session_attrs=read-write) and a standby (prefer-standby);
with spread_reads each new reader connection tries the hosts in a new order."""

from __future__ import annotations

from tests.webapp.conftest import PORT, STANDBY_PORT, call, config, db_app, dsn


def _multi_host(*ports: int, attrs: str) -> dict:
    return {**dsn(), "host": ",".join("127.0.0.1" for _ in ports),
            "port": ",".join(map(str, ports)), "target_session_attrs": attrs}


def test_libpq_finds_the_writer_and_a_standby_in_one_list(standby):
    ports = (STANDBY_PORT, PORT)
    app = db_app.App(config(writer=_multi_host(*ports, attrs="read-write"),
                            reader=_multi_host(*reversed(ports), attrs="prefer-standby"),
                            spread_reads=True))
    added = call(app, "POST", "/api/messages", {"text": "no proxy"})
    assert added.status == 201, added.text
    assert call(app, "GET", "/readyz").json()["checks"] == {"writer": "ok", "reader": "ok"}
    for role, standby_expected in (("writer", False), ("reader", True)):
        for _ in range(5):
            app.db._drop(role)
            row = app.db.run(role, "SELECT pg_is_in_recovery() AS standby")
            assert row["standby"] is standby_expected, role


def test_spread_reads_tries_the_hosts_in_a_new_order_each_connection(standby):
    """Debian 12's libpq 15 has no load_balance_hosts: without the app's shuffle every reader
    would reach the first host listed."""
    reader = _multi_host(PORT, STANDBY_PORT, attrs="any")
    seen = set()
    for spread in (False, True):
        db = db_app.Database(dsn(), reader, spread_reads=spread)
        servers = set()
        for _ in range(30):
            db._drop("reader")
            servers.add(db.run("reader", "SELECT inet_server_port() AS port")["port"])
        seen.add((spread, frozenset(servers)))
    assert seen == {(False, frozenset({PORT})), (True, frozenset({PORT, STANDBY_PORT}))}


def test_a_message_the_standby_has_not_replayed_yet_is_read_from_the_leader(standby, closed_port):
    """An id a write just returned is found though the reader's standby has not replayed it
    (here: replay paused); an id nobody has is 404, and 503 (retry) when no leader answers to
    say so."""
    app = db_app.App(config(writer=dsn(), reader=dsn(STANDBY_PORT)))
    standby.sql("SELECT pg_wal_replay_pause()")
    try:
        added = call(app, "POST", "/api/messages", {"text": "not replayed yet"})
        assert added.status == 201, added.text
        found = call(app, "GET", f"/api/messages/{added.json()['id']}")
        assert found.status == 200 and found.json()["text"] == "not replayed yet", found.text
        assert call(app, "GET", "/api/messages/999999999").status == 404
        no_leader = db_app.App(config(writer=dsn(closed_port), reader=dsn(STANDBY_PORT)))
        answer = call(no_leader, "GET", "/api/messages/999999999")
        assert answer.status == 503 and answer.headers.get("Retry-After"), answer.text
    finally:
        standby.sql("SELECT pg_wal_replay_resume()")
