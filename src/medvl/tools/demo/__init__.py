"""The web demo (``medvl demo``): a Gradio app with streamed multimodal chat and a CT viewer.

* ``app.py``: ``build_demo(model, processor) -> gradio.Blocks``, the page and its callbacks, and
  ``mount_demo``, which ``medvl serve --ui`` uses to put the same page on the API server.
* ``viewer.py``: CT planes in radiological orientation, HU windows, montages.
* ``media.py``: decoding of uploads (images, NIfTI, DICOM, zipped DICOM series).
* ``examples.py``: example cases (synthetic phantoms rendered on first use).

Nothing is imported here, so that importing the package does not import Gradio.
"""
