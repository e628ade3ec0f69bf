{#- Before anything is configured: this host has the address the pillar gives it (a map and a
    pillar that disagree stop here, naming both). failhard: a highstate stops at once. #}
{%- set own = salt['pgcluster.own_address']() %}

common-host-has-its-pillar-address:
  pgcluster.has_address:
    - name: {{ own.address }}
    - key: {{ own.key }}
    - failhard: true
