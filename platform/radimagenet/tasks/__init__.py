"""The tasks the engine runs, and their drivers: pretraining (:mod:`.pretrain`), downstream
classification and segmentation (:mod:`.classify`, :mod:`.segment`, driven by :mod:`.finetune`), and
the seeded comparison of initialisations (:mod:`.compare`). A task says what differs (model, loss,
per-sample outputs, metrics, final artifacts); :mod:`radimagenet.train.engine` does the rest.
"""
