{#- nftables: SSH (and HTTP on the web host) for anyone, each service port only for the hosts
    that use it (pgcluster.firewall), everything else refused with a reset. #}
{%- from "firewall/map.jinja" import firewall, rules with context %}
{%- if rules.enabled %}

firewall-packages:
  pkg.installed:
    - pkgs: {{ firewall.packages | json }}

firewall-config:
  file.managed:
    - name: {{ firewall.config_file }}
    - source: salt://firewall/files/nftables.conf.jinja
    - template: jinja
    - context:
        rules: {{ rules | json }}
    - user: root
    - group: root
    - mode: '0755'
    - check_cmd: nft -c -f
    - require:
      - pkg: firewall-packages

firewall-service:
  service.running:
    - name: {{ firewall.service }}
    - enable: true
    - reload: true
    - watch:
      - file: firewall-config
{%- endif %}
