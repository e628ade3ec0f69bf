{#- PostgreSQL's packages, installed so that Patroni, not Debian, owns the data directory. #}
{%- from "postgresql/map.jinja" import postgresql, cluster with context %}
{%- set version = cluster.postgresql.version %}

{%- set tls_copies = cluster.postgresql.tls_copies %}

include:
  - postgresql.data_disk
{%- if tls_copies %}
  - tls
{%- endif %}

# Before the packages: Debian must not create (and start) a cluster of its own.
postgresql-no-debian-cluster:
  file.managed:
    - name: {{ postgresql.createcluster_conf }}
    - makedirs: true
    - contents: |
        # Managed by Salt: Patroni owns PostgreSQL here; Debian creates no cluster.
        create_main_cluster = false

postgresql-packages:
  pkg.installed:
    - pkgs: {{ postgresql.packages | json }}
    - require:
      - file: postgresql-no-debian-cluster
{%- if postgresql.data_disk.device %}
      - service: postgresql-data-disk-mounted
{%- endif %}

# postgresql-common's postinst gives postgres its home only when the package is installed:
# a data disk formatted later (a replaced disk) would leave it root's.
postgresql-home:
  file.directory:
    - name: {{ postgresql.home }}
    - user: postgres
    - group: postgres
    - mode: "0755"
    - require:
      - pkg: postgresql-packages

# A VM whose image already made Debian's cluster: remove it before Patroni takes over.
postgresql-drop-debian-cluster:
  cmd.run:
    - name: pg_dropcluster --stop {{ version }} main
    - onlyif: test -f /etc/postgresql/{{ version }}/main/postgresql.conf
    - require:
      - pkg: postgresql-packages

# Debian's umbrella unit would start any cluster listed in /etc/postgresql; Patroni does.
postgresql-debian-service-off:
  service.disabled:
    - name: {{ postgresql.debian_service }}
    - require:
      - cmd: postgresql-drop-debian-cluster
{%- if tls_copies %}

{#- The cluster CA's certificate, this host's certificate and its key (salt/tls), in copies
    postgres owns (PostgreSQL refuses a key others can read). #}
postgresql-tls-copies:
  pgcluster_tls.copies_managed:
    - name: {{ postgresql.tls_dir }}
    - source: {{ cluster.tls.dir }}
    - user: postgres
    - group: postgres
    - require:
      - pkg: postgresql-packages
      - file: postgresql-home
      - pgcluster_tls: tls-certificate

# A renewed certificate is taken by a reload: connections open stay open. New ones, and a
# replica's next replication connection, use it.
postgresql-tls-reload:
  cmd.run:
    - name: /usr/lib/postgresql/{{ version }}/bin/pg_ctl reload -D {{ cluster.postgresql.data_dir }}
    - runas: postgres
    - onlyif: /usr/lib/postgresql/{{ version }}/bin/pg_ctl status -D {{ cluster.postgresql.data_dir }}
    - onchanges:
      - pgcluster_tls: postgresql-tls-copies
{%- endif %}
