"""The WSGI application of the lab's object storage (lab/object_storage.py): moto's S3, every
request to it whatever the Host (the endpoint's name, or bucket.endpoint). gunicorn imports it
from the object storage's own venv."""

from moto.moto_server.werkzeug_app import create_backend_app

application = create_backend_app("s3")
