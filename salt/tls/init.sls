{#- This host's key (made here, never leaving it) and its certificate from the cluster's CA on
    the salt-master, which signs by its own policy: this minion's id and pillar address. #}
{%- from "tls/map.jinja" import tls, cluster with context %}
{%- set hosts = dict(cluster.members, **cluster.web) %}
{%- if grains.id in hosts %}

tls-dir:
  file.directory:
    - name: {{ tls.dir }}
    - user: root
    - group: root
    - mode: '0755'
    - makedirs: true

tls-ca:
  pgcluster_tls.ca_managed:
    - name: {{ tls.dir }}/ca.crt
    - certificate: {{ tls.dir }}/host.crt
    - require:
      - file: tls-dir

tls-key:
  x509.private_key_managed:
    - name: {{ tls.dir }}/host.key
    - algo: ec
    - keysize: 256
    - mode: '0600'
    - user: root
    - group: root
    - require:
      - file: tls-dir

tls-certificate:
  pgcluster_tls.certificate_managed:
    - name: {{ tls.dir }}/host.crt
    - private_key: {{ tls.dir }}/host.key
    - ca: {{ tls.dir }}/ca.crt
    - address: {{ hosts[grains.id].address }}
    - renew_days: {{ tls.renew_days }}
{%- if tls.issued_after %}
    - issued_after: {{ tls.issued_after }}
{%- endif %}
    - require:
      - pgcluster_tls: tls-ca
      - x509: tls-key
{%- endif %}
