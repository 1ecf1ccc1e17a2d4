"""The API's routes, one ``APIRouter`` per resource; ``service.app.create_app`` includes them.

- :mod:`~service.routes.health`: ``/health`` and ``/ready``, always open.
- :mod:`~service.routes.objects`: the served objects and the default model.
- :mod:`~service.routes.admin`: reloading the object store.
- :mod:`~service.routes.pose`: poses of clouds of one object.
- :mod:`~service.routes.frames`: instances in whole frames, found (``/v1/detect``) and followed
  (``/v1/track``).
- :mod:`~service.routes.viewer`: the viewer page and what it reads, and ``/redoc``.

Every router but ``health`` and the viewer's pages is included with the API key check when keys
are configured.
"""
