"""The dataset format and its one implementation: :mod:`~radimagenet.dataset.format` (names, manifest),
:mod:`~radimagenet.dataset.tar` (the tar layout, read and written), :mod:`~radimagenet.dataset.reader`,
:mod:`~radimagenet.dataset.writer`, :mod:`~radimagenet.dataset.verify` and :mod:`~radimagenet.dataset.inspect`.

It depends only on :mod:`radimagenet.io`, :mod:`radimagenet.errors` and :mod:`radimagenet.config`;
the ingest, the loader and the tasks build on it, never the reverse.
"""
