{#- Bare hosts to a working cluster, in order, waiting for health between the steps:
    bin/deploy, or .venv/bin/salt-run state.orchestrate orch.cluster
    A pillar override for every step comes as pillar deploy_pillar (bin/deploy --pillar). #}
{%- set cluster = salt['pillar.get']('pgcluster') %}
{%- set deploy_pillar = salt['pillar.get']('deploy_pillar', {}) %}
{%- macro override() %}
{%-   if deploy_pillar %}
    - pillar: {{ deploy_pillar | json }}
{%-   endif %}
{%- endmacro %}
{%- set members = cluster.members | sort %}
{%- set web = cluster.web | sort %}
{%- set first = members[0] %}
{%- set prometheus_host = cluster.get('monitoring', {}).get('host') or web[0] %}

modules-synced:
  salt.state:
    - tgt: '*'
    - sls: saltutil

# Every host of the pillar answers and has the address the pillar gives it, before anything
# is configured from that address.
addresses:
  salt.state:
    - tgt: {{ (members + web) | join(',') }}
    - tgt_type: list
    - sls: common.address
{{- override() }}
    - require:
      - salt: modules-synced

# A member taken out of pillar leaves Patroni and etcd while the firewalls still let it talk
# (_runners/pgcluster_members; nothing on a new cluster, or when etcd's members are the pillar's).
members-leave:
  salt.runner:
    - name: pgcluster_members.leave
    - members: {{ members | json }}
{{- override() }}
    - require:
      - salt: addresses

common:
  salt.state:
    - tgt: '*'
    - sls:
      - common
      - firewall
      - tls
{{- override() }}
    - require:
      - salt: members-leave

# etcd's TLS as the pillar says on a running cluster that has it otherwise (nothing to do on a
# new one, or when it already does): member by member, Patroni paused (_runners/pgcluster_etcd).
etcd-tls-switch:
  salt.runner:
    - name: pgcluster_etcd.tls_switch
    - members: {{ members | json }}
{{- override() }}
    - require:
      - salt: common

# A member new to the pillar (or whose host was made again) joins the running etcd, now that
# it has its certificates and every firewall lets it in.
members-join:
  salt.runner:
    - name: pgcluster_members.join
    - members: {{ members | json }}
{{- override() }}
    - require:
      - salt: etcd-tls-switch

# From here the members and the web hosts go side by side: a step marked parallel runs beside
# the next ones, and each host runs one state run at a time, so no two steps that may run at
# once share a host. While the members install, the web hosts install too: the repository
# host's pgBackRest and its TLS server, before any member's Patroni (the leader archives its
# WAL from the start, and a new replica asks the repository for a backup, finds none yet, and
# clones the leader at once; with no repository host serving, pgBackRest would retry for 2
# minutes), and HAProxy's and the web app's packages. Their configuration waits for the
# members' (web-services): a change (TLS, the app's data path) reaches the servers first.
# The pgbackrest state leaves a web host that is not the repository host alone.
# Monitoring comes first in the base step of its hosts: Prometheus's targets as the pillar says
# them now (a member taken out, a scheme switched), so that no alert waits on a host that is
# gone; on the web hosts their exporters and Alertmanager too, which need nothing of the
# members. A Prometheus host that is a member gets its targets in members-base.
web-base:
  salt.state:
    - tgt: {{ web | join(',') }}
    - tgt_type: list
    - sls:
      - monitoring
      - pgbackrest
      - haproxy.install
      - webapp.install
    - parallel: true
{{- override() }}
    - require:
      - salt: members-join

# Every member's etcd (all at once: each etcd waits for a quorum of the others), PostgreSQL,
# pgBackRest and Patroni's install, in one state run. After the etcd switch: a switch refused
# changes nothing here either.
members-base:
  salt.state:
    - tgt: {{ members | join(',') }}
    - tgt_type: list
    - sls:
{%- if prometheus_host in members %}
      - monitoring.prometheus
{%- endif %}
      - etcd
      - postgresql
      - pgbackrest
      - patroni.install
{{- override() }}
    - require:
      - salt: members-join

# The first member bootstraps the cluster (or rejoins it when it already exists)...
patroni-first:
  salt.state:
    - tgt: {{ first }}
    - sls: patroni
{{- override() }}
    - require:
      - salt: members-base
      - salt: web-base

# ...then the others clone from the leader.
patroni-others:
  salt.state:
    - tgt: {{ members[1:] | join(',') }}
    - tgt_type: list
    - sls: patroni
{{- override() }}
    - require:
      - salt: patroni-first

# etcd's authentication on, now that every member's Patroni has its login: under a running
# cluster deployed without it, Patroni never meets authentication it cannot pass.
etcd-auth:
  salt.state:
    - tgt: {{ first }}
    - sls: etcd.auth
{{- override() }}
    - require:
      - salt: patroni-others

app-database:
  salt.state:
    - tgt: {{ members | join(',') }}
    - tgt_type: list
    - sls: postgresql.app
{{- override() }}
    - require:
      - salt: etcd-auth

pgbouncer:
  salt.state:
    - tgt: {{ members | join(',') }}
    - tgt_type: list
    - sls: pgbouncer
{{- override() }}
    - require:
      - salt: app-database

# The web hosts' HAProxy and web app, once the members serve as the pillar says; beside the
# members' monitoring.
web-services:
  salt.state:
    - tgt: {{ web | join(',') }}
    - tgt_type: list
    - sls:
      - haproxy
      - webapp
    - parallel: true
{{- override() }}
    - require:
      - salt: pgbouncer
      - salt: web-base

# The members' exporters (and Prometheus when its host is a member), beside the web hosts'
# steps and the backups, not before them: neither stops the other.
monitoring:
  salt.state:
    - tgt: {{ members | join(',') }}
    - tgt_type: list
    - sls: monitoring
    - parallel: true
{{- override() }}
    - require:
      - salt: pgbouncer

# Last, so that a cluster whose backups cannot start still serves: the repository host's
# repositories, the stanza, a first full backup, the schedule (pgbackrest.repository acts on
# pgcluster:pgbackrest:host only).
backup-repository:
  salt.state:
    - tgt: {{ web | join(',') }}
    - tgt_type: list
    - sls: pgbackrest.repository
{{- override() }}
    - require:
      - salt: web-services
