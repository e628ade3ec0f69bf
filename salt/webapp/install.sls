{#- The web app's packages (nginx, gunicorn, psycopg2, the Prometheus client): what the
    orchestration installs on the web hosts while the members install theirs (webapp, which
    includes this, configures the app after the members' PgBouncer, so that a change of data
    path or TLS reaches the servers, and their pg_hba, before the app). #}
{%- from "webapp/map.jinja" import webapp with context %}

webapp-packages:
  pkg.installed:
    - pkgs: {{ webapp.packages | json }}
