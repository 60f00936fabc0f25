"""The web demo (``medvl demo``): a Gradio app with streamed multimodal chat and a CT viewer.

* ``app.py``: ``build_demo(model, processor) -> gradio.Blocks`` and ``mount_demo``, which
  ``medvl serve --ui`` uses to put the same page on the API server.
* ``page.py``: the layout (components only); ``events.py``: what each control does;
  ``conversation.py``: a browser session's state and the steps on it (attach an upload, a user turn).
* ``viewer.py``: CT planes in radiological orientation, HU windows, montages.
* ``media.py``: decoding of uploads (images, NIfTI, DICOM, zipped DICOM series).
* ``examples.py``: example cases (synthetic phantoms rendered on first use).

Only the environment switch below runs here: importing the package does not import Gradio.
"""

import os

# Gradio phones home for analytics unless told otherwise; a hospital demo must not. Set here, before
# any module of the package imports gradio.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
