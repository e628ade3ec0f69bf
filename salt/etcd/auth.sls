{#- etcd's authentication on (pgcluster:etcd:auth), from the bootstrap member, once every
    member's running Patroni has its etcd login: orch.cluster applies it after the patroni
    steps, the highstate after the patroni state (salt/top.sls), and the state itself waits
    until each member's Patroni says so (patroni.etcd_logins), as the other hosts of a
    highstate may still be on their way. Users and roles come first from the etcd state; with
    authentication wanted off, that state has turned it off already. #}
{%- from "etcd/map.jinja" import cluster with context %}
{%- if grains.id == cluster.bootstrap_member %}

etcd-auth-enabled:
  etcd_cluster.auth_managed:
    - name: {{ cluster.name }}
{%- else %}

etcd-auth-elsewhere:
  test.nop:
    - name: etcd's authentication is set from {{ cluster.bootstrap_member }}
{%- endif %}
