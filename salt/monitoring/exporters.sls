{#- The exporters of this host, each on its address for the Prometheus host only (the
    firewall, salt/firewall): the node exporter everywhere (and this host's certificates' ends
    for it); on the members PostgreSQL's and PgBouncer's. Patroni, etcd, HAProxy and the web
    app serve their own /metrics. #}
{%- from "monitoring/map.jinja" import cluster, monitoring, me, address with context %}
{%- from "monitoring/units.jinja" import service_off, after_network with context %}
{%- set services, ports = monitoring.services, monitoring.ports %}
{%- set member = me in cluster.members %}
{%- set pgbouncer = member and cluster.pgbouncer.enabled %}
{%- if monitoring.enabled %}

monitoring-node-exporter-package:
  pkg.installed:
    - pkgs: {{ monitoring.packages.node_exporter | json }}
    # Debian recommends its collectors' timers (smartmontools, apt...): not here.
    - install_recommends: false

# Each exporter's configuration comes before its package: the package's postinst starts the
# service, which must find it (postgres_exporter exits on an empty DSN until systemd gives up).
monitoring-node-exporter-args:
  file.managed:
    - name: /etc/default/{{ services.node_exporter }}
    - contents: |
        # Managed by Salt (salt/monitoring).
        ARGS="--web.listen-address={{ address }}:{{ ports.node_exporter }} --collector.textfile.directory={{ monitoring.textfile_dir }}"
    - require_in:
      - pkg: monitoring-node-exporter-package

{{ after_network("monitoring-node-exporter-dropin", services.node_exporter, "monitoring-node-exporter-package") }}

monitoring-node-exporter-service:
  service.running:
    - name: {{ services.node_exporter }}
    - enable: true
    - watch:
      - file: monitoring-node-exporter-args
      - file: monitoring-node-exporter-dropin

# The end of each certificate of this host, for the alert CertificateExpiring: written again
# whenever a certificate file changes (a systemd path unit), so a renewal clears the alert.
monitoring-certificate-ends-script:
  file.managed:
    - name: /usr/local/lib/pgcluster/certificate-ends
    - source: salt://monitoring/files/certificate-ends.sh.jinja
    - template: jinja
    - makedirs: true
    - mode: '0755'
    - context:
        files: {{ [cluster.tls.dir ~ "/host.crt", cluster.tls.ca_file] | json }}
        output: {{ monitoring.textfile_dir }}/pgcluster_certificates.prom

monitoring-certificate-ends-service:
  file.managed:
    - name: /etc/systemd/system/pgcluster-certificate-ends.service
    - contents: |
        # Managed by Salt (salt/monitoring).
        [Unit]
        Description=The ends of this host's certificates, for the node exporter
        [Service]
        Type=oneshot
        ExecStart=/usr/local/lib/pgcluster/certificate-ends

monitoring-certificate-ends-path-unit:
  file.managed:
    - name: /etc/systemd/system/pgcluster-certificate-ends.path
    - contents: |
        # Managed by Salt (salt/monitoring).
        [Unit]
        Description=Watch this host's certificates for the node exporter
        [Path]
        PathChanged={{ cluster.tls.dir }}/host.crt
        PathChanged={{ cluster.tls.ca_file }}
        [Install]
        WantedBy=paths.target

monitoring-certificate-ends-path:
  service.running:
    - name: pgcluster-certificate-ends.path
    - enable: true
    - require:
      - file: monitoring-certificate-ends-script
    - watch:
      - file: monitoring-certificate-ends-service
      - file: monitoring-certificate-ends-path-unit

monitoring-certificate-ends-now:
  cmd.run:
    - name: /usr/local/lib/pgcluster/certificate-ends
    - onchanges:
      - file: monitoring-certificate-ends-script
      - file: monitoring-certificate-ends-service
    - require:
      - pkg: monitoring-node-exporter-package
{%-   if member %}

monitoring-postgres-exporter-package:
  pkg.installed:
    - pkgs: {{ monitoring.packages.postgres_exporter | json }}
    - install_recommends: false

# Its role reads the statistics (pg_monitor) and logs in over the local socket only, as its
# own OS user (pg_hba: peer; no password). Made on the leader; the replicas get it by
# replication.
monitoring-postgres-role:
  postgres_user.present:
    - name: {{ monitoring.postgres_role }}
    - login: true
    - groups: pg_monitor
    - db_user: postgres
    - user: postgres
    - onlyif:
      - fun: patroni.is_leader
        fresh: false

monitoring-postgres-exporter-queries:
  file.managed:
    - name: {{ monitoring.postgres_exporter_queries }}
    - source: salt://monitoring/files/postgres-exporter-queries.yaml
    - makedirs: true
    - mode: '0644'

monitoring-postgres-exporter-args:
  file.managed:
    - name: /etc/default/{{ services.postgres_exporter }}
    - contents: |
        # Managed by Salt (salt/monitoring).
        DATA_SOURCE_NAME='user={{ monitoring.postgres_role }} host=/var/run/postgresql port={{ cluster.postgresql.port }} dbname=postgres'
        ARGS="--web.listen-address={{ address }}:{{ ports.postgres_exporter }} --extend.query-path={{ monitoring.postgres_exporter_queries }}"
    - require:
      - file: monitoring-postgres-exporter-queries
    - require_in:
      - pkg: monitoring-postgres-exporter-package

{{ after_network("monitoring-postgres-exporter-dropin", services.postgres_exporter, "monitoring-postgres-exporter-package") }}

monitoring-postgres-exporter-service:
  service.running:
    - name: {{ services.postgres_exporter }}
    - enable: true
    - watch:
      - file: monitoring-postgres-exporter-args
      - file: monitoring-postgres-exporter-queries
      - file: monitoring-postgres-exporter-dropin
{%-   else %}
{{ service_off("monitoring-postgres-exporter-service", services.postgres_exporter) }}
{%-   endif %}
{%-   if pgbouncer %}

monitoring-pgbouncer-exporter-package:
  pkg.installed:
    - pkgs: {{ monitoring.packages.pgbouncer_exporter | json }}
    - install_recommends: false

monitoring-pgbouncer-exporter-script:
  file.managed:
    - name: /usr/local/lib/pgcluster/pgbouncer-exporter
    - source: salt://monitoring/files/pgbouncer-exporter.py
    - makedirs: true
    - mode: '0755'

# Its user's password (PgBouncer's stats_users: SHOW commands only), for the local socket;
# the exporter runs as prometheus (the node exporter's package makes the user), not postgres.
monitoring-pgbouncer-exporter-pgpass:
  file.managed:
    - name: /etc/pgcluster/pgbouncer-exporter.pgpass
    - source: salt://monitoring/files/pgbouncer-exporter.pgpass.jinja
    - template: jinja
    - makedirs: true
    - user: prometheus
    - group: prometheus
    - mode: '0600'
    - show_changes: false
    - require:
      - pkg: monitoring-node-exporter-package

monitoring-pgbouncer-exporter-unit:
  file.managed:
    - name: /etc/systemd/system/{{ services.pgbouncer_exporter }}.service
    - contents: |
        # Managed by Salt (salt/monitoring).
        [Unit]
        Description=PgBouncer's statistics for Prometheus
        Wants=network-online.target
        After=network-online.target {{ cluster.pgbouncer.service }}.service
        [Service]
        User=prometheus
        Group=prometheus
        Environment=PGPASSFILE=/etc/pgcluster/pgbouncer-exporter.pgpass
        ExecStart=/usr/local/lib/pgcluster/pgbouncer-exporter --listen {{ address }}:{{ ports.pgbouncer_exporter }} \
            --port {{ cluster.pgbouncer.port }} --user {{ monitoring.pgbouncer_user }}
        Restart=on-failure
        RestartSec=2
        [Install]
        WantedBy=multi-user.target

monitoring-pgbouncer-exporter-service:
  service.running:
    - name: {{ services.pgbouncer_exporter }}
    - enable: true
    - require:
      - pkg: monitoring-pgbouncer-exporter-package
      - pkg: monitoring-node-exporter-package
    - watch:
      - file: monitoring-pgbouncer-exporter-script
      - file: monitoring-pgbouncer-exporter-pgpass
      - file: monitoring-pgbouncer-exporter-unit
{%-   else %}
{{ service_off("monitoring-pgbouncer-exporter-service", services.pgbouncer_exporter) }}
{%-   endif %}
{%- else %}
{%-   for name in ("node_exporter", "postgres_exporter", "pgbouncer_exporter") %}
{{ service_off("monitoring-" ~ name.replace("_", "-") ~ "-service", services[name]) }}
{%-   endfor %}
{{ service_off("monitoring-certificate-ends-path", "pgcluster-certificate-ends.path") }}
{%- endif %}
