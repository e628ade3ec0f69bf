{#- HAProxy on the web host: 5000 to the leader, 5001 to the replicas (the leader as fallback). #}
{%- from "haproxy/map.jinja" import haproxy, cluster with context %}

include:
  - haproxy.install
{%- if cluster.patroni.tls %}
  - tls
{%- endif %}

# Validated with `haproxy -c` before it replaces the running config.
haproxy-config:
  file.managed:
    - name: {{ haproxy.config_file }}
    - source: salt://haproxy/files/haproxy.cfg.jinja
    - template: jinja
    - mode: '0644'
    - check_cmd: haproxy -c -q -f
    - context:
        cluster: {{ cluster | json }}
        address: {{ cluster.web[grains.id].address }}
    - require:
      - pkg: haproxy-packages
{%- if cluster.patroni.tls %}
      # The CA that verifies Patroni's certificates in the health checks (and haproxy -c).
      - pgcluster_tls: tls-ca
{%- endif %}

haproxy-service:
  service.running:
    - name: {{ haproxy.service }}
    - enable: true
    - reload: true
    - watch:
      - file: haproxy-config
{%- if cluster.patroni.tls %}
      - pgcluster_tls: tls-ca
{%- endif %}
