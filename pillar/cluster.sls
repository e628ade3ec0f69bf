# The cluster in the lab (cloud.maps.d/lab.map gives the hosts these addresses, in the lab's
# 10.0.0.0/24); on Yandex Cloud, pillar/cluster_yandex.sls (pillar/top.sls chooses). Every key
# and its default: pillar.example. Checked by pgcluster.config.
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
  postgresql:
    # PostgreSQL's own disk (the profile's secondary disk pgdata), mounted on its home.
    data_disk:
      device: /dev/disk/by-id/virtio-pgdata
