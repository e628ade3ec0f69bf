base:
  '*':
    - cluster
    - credentials
