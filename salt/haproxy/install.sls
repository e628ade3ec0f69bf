{#- HAProxy's package: what the orchestration installs on the web hosts while the members
    install theirs (haproxy, which includes this, configures it after the members'
    PgBouncer, so that a change reaches the servers before their clients). #}
{%- from "haproxy/map.jinja" import haproxy with context %}

haproxy-packages:
  pkg.installed:
    - pkgs: {{ haproxy.packages | json }}
