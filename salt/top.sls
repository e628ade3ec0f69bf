{#- Roles come from the cluster pillar: its members run the database stack, its web host HAProxy. #}
{%- set cluster = salt['pillar.get']('pgcluster', {}) %}
base:
  '*':
    - common.address
    - common
    - firewall
    - tls
{%- if cluster.get('members') %}
  '{{ cluster.members | join(",") }}':
    - match: list
    - etcd
    - postgresql
    - pgbackrest
    - patroni
    - etcd.auth
    - postgresql.app
    - pgbouncer
    - monitoring
{%- endif %}
{%- if cluster.get('web') %}
  '{{ cluster.web | join(",") }}':
    - match: list
    - haproxy
    - webapp
    - pgbackrest.repository
    - monitoring
{%- endif %}
