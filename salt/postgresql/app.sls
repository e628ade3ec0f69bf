{#- The application's role and database, made on the leader through Patroni's PostgreSQL. #}
{%- from "postgresql/map.jinja" import cluster with context %}
{%- if salt['pgcluster.is_leader']() %}
{%-   set creds = salt['pillar.get']('pgcluster_credentials') %}

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

postgresql-app-database:
  postgres_database.present:
    - name: {{ cluster.app.database }}
    - owner: {{ cluster.app.user }}
    - encoding: UTF8
    - db_user: postgres
    - user: postgres
    - require:
      - postgres_user: postgresql-app-user
{%- else %}

postgresql-app-on-the-leader-only:
  test.nop:
    - name: the application's role and database are made on the leader
{%- endif %}
