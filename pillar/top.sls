# The cluster, described once per site: the lab's (pillar/cluster.sls, 10.0.0.0/24) or Yandex
# Cloud's (pillar/cluster_yandex.sls, a subnet per zone). The salt-master's option
# pgcluster_site says which (bin/master start --site yandex; the lab's master and an offline
# render use the lab's). The passwords come from the master's ext_pillar pgcluster_credentials
# (_pillar/), which reads the members from this pillar.
{%- set site = opts.get('pgcluster_site', 'lab') %}
base:
  '*':
    - {{ 'cluster' if site == 'lab' else 'cluster_' ~ site }}
