"""Import MedM-VL checkpoints (github.com/MSIIP/MedM-VL) as self-contained medvl checkpoints.

A MedM-VL checkpoint folder holds ``config.json`` with only ``lvlm_*`` fields (no architecture), the
weights of every part (``llm.*``, ``encoder_image.encoder.*`` / ``encoder_image3d.encoder.*``,
``connector_image.*`` / ``connector_image3d.*``) and a tokenizer. MedM-VL rebuilds the LLM and the
encoders from the folders (usually hub ids) named in the config; here the user passes local folders
(``--llm``, ``--vision``, ``--volume``) holding at least their ``config.json`` (+ tokenizer for the LLM,
+ ``preprocessor_config.json`` for a 2D tower). Every weight comes from the checkpoint. The
user-facing guide is ``docs/medm-vl.md``.

The package, in the order a conversion runs (:func:`convert_medmvl`):

* ``layout.py``: read and check ``config.json`` (:func:`read_layout`) against the tables of the
  encoder and connector types medvl knows (``ENCODER_TYPES``, ``CONNECTOR_TYPES``; refused ones with
  the reason in ``REFUSED_ENCODER_TYPES``), and find the part folders (:func:`resolve_parts`).
* ``config.py``: the layout + part configs -> ``MedVLConfig`` fields (:func:`translate_config`).
* ``keys.py``: ONE key-mapping table, ``KEY_TABLE``: ordered ``(regex -> target)`` rows per part,
  applied by :func:`rename_keys`. A key no row matches, or a mapped key the model lacks, is an error
  naming it.
* ``processor.py``: MedM-VL's preprocessing -> the medvl processor (tokenizer + chat template, the
  tower's image processor, volume processor settings).
* ``convert.py``: the steps above, then the model, the processor and the folder are written.

The layouts MedM-VL's releases use (each is a combination of table entries, none is a code branch):

==========================  ===============================  ===================================
layout                      config.json                      medvl model
==========================  ===============================  ===================================
MedM-VL-2D                  siglip/clip + mlp                image tower + MLP connector
MedM-VL-CT-Chest            siglip + attn_pooling            slice-wise volume encoder + attention pooling
MedM-CLIP 3D                medmclip + spatial_pooling/mlp   vit3d volume encoder
M3D-CLIP 3D                 m3dclip + mlp/spatial_pooling    vit3d volume encoder
==========================  ===============================  ===================================

Adding a layout means adding entries, not branches. For example a 2D tower type ``dinov2`` saved
as ``encoder_image.encoder.*`` by a Hugging Face ``Dinov2Model``::

    # layout.py
    ENCODER_TYPES["dinov2"] = EncoderType("image", image_processor="BitImageProcessorPil")

and its weights already map through ``KEY_TABLE["image"]`` (``tests/test_convert_medmvl.py`` converts
such a checkpoint after adding just that entry). A connector ``qformer`` with its own
weights under ``connector_image.qformer.*``::

    # layout.py
    CONNECTOR_TYPES["qformer"] = ConnectorType("qformer", {"num_heads": 8})   # a medvl connector type
    # keys.py, KEY_TABLE["image"] (and "image3d")
    (r"connector_image\\.qformer\\.(.+)", r"{connector}.qformer.\\1"),

What the importer reproduces (tested against MedM-VL's recorded outputs, ``tests/test_convert_medmvl.py``):

* the ``qwen2`` conversation format (Vicuna-style text ending in ``" ASSISTANT:"``, answers closed by
  ``<|im_end|>``), tokenised chunk-wise around the media markers (special marker tokens do that);
* the image processor of the tower; for CT through a 2D tower, MedM-VL's HU -> 0..255 map,
  foreground crop, trilinear resize to 32 slices and uint8 truncation (volume processor ``medmvl``);
* feature selection (``hidden_states[select_layer]`` without post-layernorm; ``patch`` drops token 0);
* the connectors: ``mlp`` (``mlpNx_gelu``), ``attn_pooling`` (learned queries, 8 heads, then the MLP),
  ``spatial_pooling`` (2x2x2 average pooling over the 3D patch grid, then the MLP);
* a tied LM head when the checkpoint stores none and the LLM config says ``tie_word_embeddings``;
* greedy generation without the LLM's hub generation config (MedM-VL never applies it after a reload).
"""

from .convert import build_medvl_model, convert_medmvl
from .layout import MedMVLConversionError

__all__ = ["MedMVLConversionError", "build_medvl_model", "convert_medmvl"]
