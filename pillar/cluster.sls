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
  pgbackrest:
    # Both kinds of repository, each with every backup and the whole WAL archive.
    repositories:
      # On the repository host's disk (the first web host), served by pgBackRest's TLS server.
      - type: posix
        path: /var/lib/pgbackrest
      # Object Storage as on Yandex Cloud: its endpoint and region, a bucket, a static access
      # key. Here the lab's stand-in serves it (lab/object_storage.py, started by bin/lab up)
      # on the bridge's address, with a CA and a key that bin/lab makes; both files are on the
      # salt-master, relative to this directory, out of git. On Yandex Cloud: no address, no
      # ca_file, port 443.
      - type: s3
        path: /pgbackrest
        s3:
          endpoint: storage.yandexcloud.net
          region: ru-central1
          bucket: pg-cluster-skynet-backups
          port: 9443
          address: 10.0.0.1
          credentials_file: generated/lab-object-storage/credentials.yaml
          ca_file: generated/lab-object-storage/ca.crt
