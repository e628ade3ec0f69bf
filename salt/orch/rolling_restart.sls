{#- Rolling maintenance of the running cluster (_runners/pgcluster_rolling.py): every member's
    PostgreSQL restarted one at a time, replicas first, then a switchover and the old leader;
    the writes stop for one switchover.
        .venv/bin/salt-run state.orchestrate orch.rolling_restart
    Pillar: upgrade (true: each member's Debian packages upgraded before its restart), pending
    (true: only members where a changed parameter waits for a restart). #}
{%- set members = salt['pillar.get']('pgcluster:members') | sort %}

modules-synced:
  salt.state:
    - tgt: {{ members | join(',') }}
    - tgt_type: list
    - sls: saltutil

rolling-restart:
  salt.runner:
    - name: pgcluster_rolling.restart
    - members: {{ members | json }}
    - upgrade: {{ salt['pillar.get']('upgrade', False) | json }}
    - pending: {{ salt['pillar.get']('pending', False) | json }}
    - require:
      - salt: modules-synced
