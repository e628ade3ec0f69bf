# The cluster, described once: the same in the lab and on Yandex Cloud (the maps give the VMs
# these addresses). Every key and its default: pillar.example. Checked by pgcluster.config.
pgcluster:
  name: pg-cluster-skynet
  members:
    postgres-srv1:
      address: 10.0.0.11
    postgres-srv2:
      address: 10.0.0.12
    postgres-srv3:
      address: 10.0.0.13
  web:
    web:
      address: 10.0.0.10
