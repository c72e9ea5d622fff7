"""``sd3d serve``: the browser app (Gradio) over the same library calls as the CLI.

* :mod:`sd3d.webapp.handlers` does the work without importing Gradio: sessions and their folders,
  the cached model, upload checks, and every step of the photo and views tabs, mapped onto
  :mod:`sd3d.workflows.run`, :mod:`sd3d.preprocess` and :mod:`recon.pipeline`. Errors are the library's
  one-line :class:`~sd3d.core.errors.UserError`\\ s.
* :mod:`sd3d.webapp.layout` builds the page (``gr.Blocks``), turns those errors into ``gr.Error``
  messages and launches the server.

Gradio is an optional extra (``pip install 'sd3d[app]'``); nothing here is imported by ``sd3d --help``.
"""

from __future__ import annotations
