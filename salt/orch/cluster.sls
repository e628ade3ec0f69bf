{#- Bare hosts to a working cluster, in order, waiting for health between the steps:
    .venv/bin/salt-run state.orchestrate orch.cluster #}
{%- set cluster = salt['pillar.get']('pgcluster') %}
{%- set members = cluster.members | sort %}
{%- set web = cluster.web | sort %}
{%- set first = members[0] %}

modules-synced:
  salt.state:
    - tgt: '*'
    - sls: saltutil

common:
  salt.state:
    - tgt: '*'
    - sls:
      - common
      - firewall
    - require:
      - salt: modules-synced

# All members at once: each etcd waits for a quorum of the others.
etcd:
  salt.state:
    - tgt: {{ members | join(',') }}
    - tgt_type: list
    - sls: etcd
    - require:
      - salt: common

postgresql:
  salt.state:
    - tgt: {{ members | join(',') }}
    - tgt_type: list
    - sls: postgresql
    - require:
      - salt: common

# The first member bootstraps the cluster (or rejoins it when it already exists)...
patroni-first:
  salt.state:
    - tgt: {{ first }}
    - sls: patroni
    - require:
      - salt: etcd
      - salt: postgresql

# ...then the others clone from the leader.
patroni-others:
  salt.state:
    - tgt: {{ members[1:] | join(',') }}
    - tgt_type: list
    - sls: patroni
    - require:
      - salt: patroni-first

app-database:
  salt.state:
    - tgt: {{ members | join(',') }}
    - tgt_type: list
    - sls: postgresql.app
    - require:
      - salt: patroni-others

pgbouncer:
  salt.state:
    - tgt: {{ members | join(',') }}
    - tgt_type: list
    - sls: pgbouncer
    - require:
      - salt: app-database

haproxy:
  salt.state:
    - tgt: {{ web | join(',') }}
    - tgt_type: list
    - sls: haproxy
    - require:
      - salt: pgbouncer

webapp:
  salt.state:
    - tgt: {{ web | join(',') }}
    - tgt_type: list
    - sls: webapp
    - require:
      - salt: haproxy
