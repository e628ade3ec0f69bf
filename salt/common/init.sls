{#- Every host knows the cluster's hosts by name, as the original task's did. #}
{%- from "common/map.jinja" import cluster with context %}
{%- for section in ('members', 'web') %}
{%-   for name, host in cluster[section] | dictsort %}

common-hosts-{{ name }}:
  host.present:
    - name: {{ name }}
    - ip: {{ host.address }}
{%-   endfor %}
{%- endfor %}
