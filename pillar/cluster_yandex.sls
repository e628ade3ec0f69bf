# The cluster on Yandex Cloud (the salt-master started with bin/master start --site yandex):
# the lab's cluster (pillar/cluster.sls) with each member in a zone of its own, at the address
# cloud.maps.d/yandex.map gives its VM in that zone's subnet (cloud.providers.d/yandex.conf:
# network:subnets). Every key and its default: pillar.example. Checked by pgcluster.config.
pgcluster:
  name: pg-cluster-skynet
  members:
    postgres-srv1:
      address: 10.0.1.11        # ru-central1-a
    postgres-srv2:
      address: 10.0.2.12        # ru-central1-b
    postgres-srv3:
      address: 10.0.3.13        # ru-central1-d
  web:
    web:
      address: 10.0.1.10        # ru-central1-a
  postgresql:
    # PostgreSQL's own disk (the profile's secondary disk pgdata), mounted on its home.
    data_disk:
      device: /dev/disk/by-id/virtio-pgdata
