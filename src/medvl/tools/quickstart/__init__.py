"""``medvl quickstart``: train a small medvl model from scratch on synthetic phantoms and score it
against a blind baseline through ``medvl eval``.

* :mod:`~medvl.tools.quickstart.recipe`: the 2D and 3D recipes (:class:`Recipe`, ``RECIPES``).
* :mod:`~medvl.tools.quickstart.pipeline`: :func:`run_quickstart`, the run as a list of named steps.
* :mod:`~medvl.tools.quickstart.training`: stage 0 and instruction tuning through ``medvl.train``.
* :mod:`~medvl.tools.quickstart.blind`: the blind baseline's blank-image splits.
* :mod:`~medvl.tools.quickstart.evaluation`: the test split scored by ``medvl.eval`` (named protocols).
* :mod:`~medvl.tools.quickstart.report`: the loss curves and the model-vs-blind table.
"""
