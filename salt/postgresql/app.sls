{#- The application's role and database, made on the leader through Patroni's PostgreSQL. #}
{%- from "postgresql/map.jinja" import cluster with context %}
{%- set creds = salt['pillar.get']('pgcluster_credentials') %}

# On the leader only (a replica is read-only): asked when the state runs, not when it renders,
# so rendering it asks no member anything.
postgresql-app-user:
  postgres_user.present:
    - name: {{ cluster.app.user }}
    - password: {{ creds.app | json }}
    - encrypted: scram-sha-256
    - login: true
    - superuser: false
    - createdb: false
    - createroles: false
    - replication: false
    - db_user: postgres
    - user: postgres
    - onlyif:
      - fun: patroni.is_leader
        fresh: false

postgresql-app-database:
  postgres_database.present:
    - name: {{ cluster.app.database }}
    - owner: {{ cluster.app.user }}
    - encoding: UTF8
    - db_user: postgres
    - user: postgres
    - onlyif:
      - fun: patroni.is_leader
        fresh: false
    - require:
      - postgres_user: postgresql-app-user
