{#- Patroni's config and its service (patroni.install: Patroni itself). #}
{%- from "patroni/map.jinja" import patroni, cluster with context %}
{#- postgres's copies of the certificates (salt/postgresql) serve PostgreSQL and the REST API. #}
{%- set tls_copies = cluster.postgresql.tls_copies %}

include:
  - postgresql
  - patroni.install

patroni-config-dir:
  file.directory:
    - name: {{ patroni.config_dir }}
    - user: {{ patroni.user }}
    - group: {{ patroni.group }}
    - mode: '0750'
    - require:
      - pkg: postgresql-packages

{#- Patroni takes etcd's endpoints and CA only when it starts: while this member's etcd is not
    on the pillar's TLS yet, its config keeps them until the switch (bin/deploy's
    pgcluster_etcd.tls_switch, which restarts Patroni at the right moment) writes it. #}
{%- set etcd_stage = salt['etcd_cluster.tls_stage'](fresh=False) %}
{%- set etcd_switch_pending = etcd_stage.pending and not salt['pillar.get']('etcd_tls_switch') %}
{%- if etcd_switch_pending %}

patroni-etcd-tls-unchanged:
  test.fail_without_changes:
    - name: etcd's TLS unchanged
    - comment: >-
        this member's etcd runs {{ etcd_stage.running }}, pgcluster:etcd:tls wants
        {{ etcd_stage.wanted }}: bin/deploy (the orchestration orch.cluster) switches etcd
        and Patroni's endpoints under the running cluster
{%- endif %}

# Holds every password: 0600, never shown in state output. Patroni validates it first.
patroni-config:
  file.managed:
    - name: {{ patroni.config_file }}
    - source: salt://patroni/files/config.yml.jinja
    - template: jinja
    - user: {{ patroni.user }}
    - group: {{ patroni.group }}
    - mode: '0600'
    - show_changes: false
    - check_cmd: {{ patroni.venv }}/bin/patroni --validate-config --ignore-listen-port
    - require:
      - file: patroni-config-dir
      - pip: patroni-pip
{%- if etcd_switch_pending %}
      - test: patroni-etcd-tls-unchanged
{%- endif %}

patroni-unit:
  file.managed:
    - name: /etc/systemd/system/{{ patroni.service }}.service
    - source: salt://patroni/files/patroni.service.jinja
    - template: jinja
    - context:
        patroni: {{ patroni | json }}
        home: {{ cluster.postgresql.home }}

patroni-service:
  service.running:
    - name: {{ patroni.service }}
    - enable: true
    # A changed config is reloaded (SIGHUP): Patroni applies it, restarting PostgreSQL only
    # when a parameter needs it. Restarting Patroni would stop PostgreSQL.
    - reload: true
    - require:
      - file: patroni-unit
      - service: postgresql-debian-service-off
    - watch:
      - file: patroni-config
{%- if tls_copies %}
      # A renewed certificate: the reload makes the REST API take it (Patroni compares its
      # serial number); PostgreSQL's own reload is salt/postgresql's.
      - pgcluster_tls: postgresql-tls-copies
{%- endif %}

{#- A wait changes nothing; in test mode http.query never succeeds, so it is skipped. A
    restore's bootstrap (orch.restore) is waited for by pgbackrest.wait_restored, which also
    tells when it failed and why; its settings follow once it leads. #}
{%- set restoring = salt['pillar.get']('restore:target') %}
{%- if not opts.test and not restoring %}

patroni-healthy:
  http.wait_for_successful_query:
    - name: {{ cluster.patroni.urls[grains.id] }}/health
    - status: 200
{%-   if cluster.patroni.tls %}
    - ca_bundle: {{ cluster.tls.ca_file }}
{%-   endif %}
    - wait_for: {{ patroni.healthy_wait }}
    - request_interval: 1
    - require:
      - service: patroni-service
{%- endif %}

{%- if not restoring %}

# After the bootstrap, a changed cluster-wide setting (timing, synchronous_mode, PostgreSQL
# parameters) reaches the running cluster through Patroni, not by editing files behind it.
patroni-dcs-config:
  patroni_dcs.managed:
    - config: {{ salt['pgcluster.dcs_config']() | json }}
    - retry:
        attempts: 30
        interval: 2
    - require:
      - service: patroni-service
{%- if not opts.test %}
      - http: patroni-healthy
{%- endif %}
{%- endif %}
