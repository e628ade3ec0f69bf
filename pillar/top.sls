# The cluster, described once per site: the lab's (pillar/cluster.sls, 10.0.0.0/24) or Yandex
# Cloud's (pillar/cluster_yandex.sls, a subnet per zone). The salt-master's option
# pgcluster_site says which (bin/master start --site yandex; the lab's master and an offline
# render use the lab's). The passwords come from the master's ext_pillar pgcluster_credentials
# (_pillar/), which reads the members from this pillar.
#
# pillar/local.sls, when there is one, is merged over it: this checkout's own changes, kept out
# of git (bench/tls.py switches TLS with it). Its own target, so that ignore_missing (for the
# whole list it is in) never hides a missing site pillar. '?*' matches every minion, as '*'.
{%- set site = opts.get('pgcluster_site', 'lab') %}
base:
  '*':
    - {{ 'cluster' if site == 'lab' else 'cluster_' ~ site }}
  '?*':
    - local
    - ignore_missing: true
