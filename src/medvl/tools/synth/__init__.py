"""Synthetic chest phantoms and their bilingual questions (``medvl data synth``, the quickstart's data).

* :mod:`~medvl.tools.synth.findings`: the ground truth of a case (nodules, effusion, heart size).
* :mod:`~medvl.tools.synth.text`: the questions, answers and findings reports derived from it.
* :mod:`~medvl.tools.synth.phantoms`: rendering a case as a radiograph (PNG/DICOM) or a CT (NIfTI).
* :mod:`~medvl.tools.synth.dataset`: a whole data set (splits, native records, label tables).

The records it writes are medvl's native format, read by the core like any other data set
(``medvl.eval.tasks.synth`` scores them); nothing in the core imports this package.
"""
