{#- PgBouncer in front of PostgreSQL on every member (when pgcluster:pgbouncer:enabled). #}
{%- from "pgbouncer/map.jinja" import pgbouncer, cluster with context %}
{%- if cluster.pgbouncer.enabled %}
{%-   set me = cluster.members[grains.id] %}

pgbouncer-package:
  pkg.installed:
    - name: {{ pgbouncer.package }}

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
    - require:
      - pkg: pgbouncer-package

# listen_addr only changes on a restart, so a changed config restarts PgBouncer.
# A changed config restarts PgBouncer: a reload would not move it off the listen address
# Debian's package first started it with (localhost).
pgbouncer-service:
  service.running:
    - name: {{ pgbouncer.service }}
    - enable: true
    - watch:
      - file: pgbouncer-config
      - file: pgbouncer-userlist
{%- else %}

pgbouncer-service:
  service.dead:
    - name: {{ pgbouncer.service }}
    - enable: false
    - onlyif: systemctl cat {{ pgbouncer.service }}
{%- endif %}
