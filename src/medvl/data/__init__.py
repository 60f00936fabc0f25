"""medvl's data pipeline (import the submodules; this package imports nothing heavy on its own).

* :mod:`medvl.data.records`: ``Record`` and ``load_records`` (native and MedM-VL/LLaVA JSON/JSONL).
* :mod:`medvl.data.registry`: dataset registry YAML, ``load_sources`` / ``load_registry_records``.
* :mod:`medvl.data.templates`: chat templates (tokenizer's own, chatml, llama3, vicuna/medmvl, plain).
* :mod:`medvl.data.labels`: ``ConversationEncoder``: token ids with exact assistant-only labels.
* :mod:`medvl.data.dataset`: ``ConversationDataset`` (lazy errors, skip policies), ``mix_records``.
* :mod:`medvl.data.collator`: ``PaddedCollator`` (right/left), ``PackingCollator`` and ``AdaptivePackingCollator`` (packs only where it saves rows).
* :mod:`medvl.data.check`: ``check_data`` behind ``medvl data check``.
* :mod:`medvl.data.prepare`: ``prepare_volumes`` / ``VolumeCache`` behind ``medvl data prepare``.
* :mod:`medvl.data.feature_cache`: ``build_feature_cache``: a frozen encoder's outputs, once per file
  (``data.cache_encoder_features``).
* :mod:`medvl.data.finding_labels`: stage-0 labels per image/volume (label tables, ``meta.labels``,
  closed yes/no answers), ``LabelSchema`` and ``FindingDataset``.
* :mod:`medvl.data.augment`: augmentation (synthetic phantoms are a tool: ``medvl data synth``).
"""
