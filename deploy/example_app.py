"""The handlers the compose file and the Kubernetes manifests run (``--app
deploy.example_app:app``): chronoq's demo set (``demo.add``, ``demo.sleep``, ``demo.flaky``,
``demo.fail``, ``demo.report`` and the ``demo.tick`` schedule). Replace it with your own
module:attribute of a :class:`chronoq.App`."""

from __future__ import annotations

from chronoq import App, demo

app = App()
demo.register(app)
