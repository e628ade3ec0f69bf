{#- pgBackRest on a member or on the repository host: the package, the host's certificate, the
    configuration, and pgBackRest's TLS server, through which the two reach each other. #}
{%- from "pgbackrest/map.jinja" import pgbackrest, cluster with context %}
{%- if pgbackrest.enabled and (grains.id in cluster.members or grains.id == pgbackrest.host) %}

include:
  - tls

pgbackrest-package:
  pkg.installed:
    - pkgs: {{ pgbackrest.packages | json }}

{#- The cluster CA's certificate, this host's certificate and its key (salt/tls), in copies
    pgBackRest's user owns. #}
pgbackrest-tls-copies:
  pgcluster_tls.copies_managed:
    - name: {{ pgbackrest.tls_dir }}
    - source: {{ cluster.tls.dir }}
    - user: {{ pgbackrest.user }}
    - group: {{ pgbackrest.group }}
    - require:
      - pkg: pgbackrest-package
      - pgcluster_tls: tls-certificate

{#- Object storage with a CA of its own, or reached by an address the hosts cannot resolve. #}
{%- for repo in pgbackrest.repositories %}
{%-   set number = loop.index %}
{%-   if repo.type == 's3' and repo.s3.ca_file %}

pgbackrest-repo{{ number }}-storage-ca:
  file.managed:
    - name: {{ pgbackrest.tls_dir }}/repo{{ number }}-storage-ca.crt
    - source: salt://pgbackrest/files/pillar_value.jinja
    - template: jinja
    - context:
        key: pgcluster_credentials:s3:{{ number }}:ca
        source: pgcluster_credentials
    - mode: '0644'
    - require:
      - pgcluster_tls: pgbackrest-tls-copies
    - require_in:
      - file: pgbackrest-config
{%-   endif %}
{%-   if repo.type == 's3' and repo.s3.address %}
{#-     Host-style addressing reaches bucket.endpoint, path-style the endpoint. #}

pgbackrest-repo{{ number }}-storage-address:
  host.present:
    - names:
      - {{ repo.s3.endpoint }}
{%-     if repo.s3.uri_style == 'host' %}
      - {{ repo.s3.bucket }}.{{ repo.s3.endpoint }}
{%-     endif %}
    - ip: {{ repo.s3.address }}
    - clean: true
{%-   endif %}
{%- endfor %}

{%- for dir in (pgbackrest.log_path, pgbackrest.spool_path) %}

pgbackrest-dir-{{ dir }}:
  file.directory:
    - name: {{ dir }}
    - user: {{ pgbackrest.user }}
    - group: {{ pgbackrest.group }}
    - mode: '0750'
    - require:
      - pkg: pgbackrest-package
    - require_in:
      - service: pgbackrest-server
{%- endfor %}

# Holds the repository passphrase and the object storage keys: never shown in state output.
pgbackrest-config:
  file.managed:
    - name: {{ pgbackrest.config_file }}
    - source: salt://pgbackrest/files/pgbackrest.conf.jinja
    - template: jinja
    - user: {{ pgbackrest.user }}
    - group: {{ pgbackrest.group }}
    - mode: '0640'
    - show_changes: false
    - require:
      - pkg: pgbackrest-package

# pgBackRest's TLS server (Debian's unit): the repository host reaches a member's PostgreSQL
# through it, a member the repository through the repository host's. A restart, not a reload,
# takes a new certificate.
pgbackrest-server:
  service.running:
    - name: {{ pgbackrest.service }}
    - enable: true
    - watch:
      - file: pgbackrest-config
      - pgcluster_tls: pgbackrest-tls-copies
{%- elif grains.id in cluster.members or grains.id in cluster.web %}

pgbackrest-server:
  service.dead:
    - name: {{ pgbackrest.service }}
    - enable: false
    - onlyif: systemctl cat {{ pgbackrest.service }}
{%- endif %}
