{#- PgBouncer in front of PostgreSQL on every member (when pgcluster:pgbouncer:enabled). #}
{%- from "pgbouncer/map.jinja" import pgbouncer, cluster with context %}
{%- if cluster.pgbouncer.enabled %}
{%-   set me = cluster.members[grains.id] %}
{#-   Its certificate serves clients (pgbouncer:tls) and PostgreSQL (postgresql:tls). #}
{%-   set tls = cluster.pgbouncer.tls or cluster.postgresql.tls %}
{%-   if tls %}

include:
  - tls
{%-   endif %}

pgbouncer-package:
  pkg.installed:
    - name: {{ pgbouncer.package }}
{%-   if tls %}

{#- The cluster CA's certificate, this host's certificate and its key (salt/tls), in copies
    PgBouncer's user owns. #}
pgbouncer-tls-copies:
  pgcluster_tls.copies_managed:
    - name: {{ pgbouncer.tls_dir }}
    - source: {{ cluster.tls.dir }}
    - user: {{ pgbouncer.user }}
    - group: {{ pgbouncer.group }}
    - require:
      - pkg: pgbouncer-package
      - pgcluster_tls: tls-certificate
    - require_in:
      - service: pgbouncer-service
{%-   endif %}

# The application's credentials, in sync with its role (postgresql.app). Never shown.
pgbouncer-userlist:
  file.managed:
    - name: {{ pgbouncer.userlist_file }}
    - source: salt://pgbouncer/files/userlist.txt.jinja
    - template: jinja
    - user: {{ pgbouncer.user }}
    - group: {{ pgbouncer.group }}
    - mode: '0640'
    - show_changes: false
    - require:
      - pkg: pgbouncer-package

pgbouncer-config:
  file.managed:
    - name: {{ pgbouncer.config_file }}
    - source: salt://pgbouncer/files/pgbouncer.ini.jinja
    - template: jinja
    - user: {{ pgbouncer.user }}
    - group: {{ pgbouncer.group }}
    - mode: '0640'
    - context:
        address: {{ me.address }}
        cluster: {{ cluster | json }}
        userlist_file: {{ pgbouncer.userlist_file }}
        tls_dir: {{ pgbouncer.tls_dir }}
    - require:
      - pkg: pgbouncer-package

# A changed config restarts PgBouncer: a reload would not move it off the listen address
# Debian's package first started it with (localhost).
pgbouncer-service:
  service.running:
    - name: {{ pgbouncer.service }}
    - enable: true
    - watch:
      - file: pgbouncer-config
      - file: pgbouncer-userlist
{%-   if tls %}

# A renewed certificate is taken by a reload (SIGHUP): clients stay connected.
pgbouncer-tls-reload:
  cmd.run:
    - name: systemctl reload {{ pgbouncer.service }}
    - onlyif: systemctl is-active --quiet {{ pgbouncer.service }}
    - onchanges:
      - pgcluster_tls: pgbouncer-tls-copies
    - require:
      - service: pgbouncer-service
{%-   endif %}
{%- else %}

pgbouncer-service:
  service.dead:
    - name: {{ pgbouncer.service }}
    - enable: false
    - onlyif: systemctl cat {{ pgbouncer.service }}
{%- endif %}
