{#- HAProxy on the web host: 5000 to the leader, 5001 to the replicas (the leader as fallback). #}
{%- from "haproxy/map.jinja" import haproxy, cluster with context %}

haproxy-packages:
  pkg.installed:
    - pkgs: {{ haproxy.packages | json }}

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

haproxy-service:
  service.running:
    - name: {{ haproxy.service }}
    - enable: true
    - reload: true
    - watch:
      - file: haproxy-config
