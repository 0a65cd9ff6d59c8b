"""Frozen feature extractors (CLIP, any text or image ``AutoModel``) and the on-disk feature cache.

The encoders are used once per item: pbeh trains on the features they produce, never on raw images or texts, so
extracting features once and caching them (:class:`FeatureCache`) is the fast path.

Every ``encode_*`` method

* runs the model in eval mode under :func:`torch.inference_mode`, in batches of ``batch_size`` items, with a tqdm
  progress bar that ``show_progress_bar=False`` turns off;
* runs on the model's device (choose it with ``device=`` when building the encoder, or move the model yourself);
* returns a C-contiguous ``float32`` :class:`numpy.ndarray` of shape ``(n_items, encoder.dim)`` on the CPU, whatever
  the model's dtype or device (numpy is what the trainer and :class:`FeatureCache` consume);
* with ``normalize=True``, divides every row by its L2 norm.

Texts are batched longest first (similar lengths pad less); the rows come back in input order. Results do not depend
on ``batch_size`` beyond float rounding.

Images are PIL images, paths to image files (opened with PIL, one batch at a time), or a tensor / array of shape
``(batch, channels, height, width)`` that is taken as already-preprocessed ``pixel_values`` (what the image processor
returns) and fed to the model as it is. PIL images that are not RGB are converted to RGB first.

Feature cache file format (``pbeh_kind = "features"``, ``format_version = 1``): a safetensors file with two tensors,
``features`` (float32, ``(n, dim)``) and ``ids`` (int64, ``(n,)``, unique), and the metadata ``encoder_name``,
``modality`` (``"image"`` or ``"text"``), ``dim`` and ``n_items``. Item ids are int64 only: map string keys (file
names, URLs) to integers before caching, e.g. with their row number in your dataset file.

Modules (private; everything public is imported from here):

* ``_loading``: a model from a hub name or a local folder, its dtype and device, the encoder's recorded name.
* ``_frozen``: what the encoders share: eval mode on the model's device and the batched encoding loop.
* ``_text``: the texts check, longest-first batching, :class:`TextEncoder` and :func:`minilm_path`.
* ``_image``: the images check, RGB opening, :class:`ImageEncoder`.
* ``_clip``: :class:`CLIPEncoder` (it uses the text and image encoding of ``_text`` and ``_image``).
* ``_features``: the id and feature checks, :func:`save_features` and :func:`load_features`.
* ``_cache``: :class:`FeatureCache`, its file lock and its torch.distributed path.
"""

from __future__ import annotations

from ._cache import FeatureCache
from ._clip import CLIPEncoder

# The private helper (aliased) is used by tests/test_encoders.py.
from ._clip import _embedding_tensor as _embedding_tensor
from ._features import FEATURES_FORMAT_VERSION as FEATURES_FORMAT_VERSION
from ._features import FEATURES_KIND as FEATURES_KIND
from ._features import MODALITIES as MODALITIES
from ._features import PathLike as PathLike
from ._features import load_features, save_features
from ._image import ImageEncoder
from ._text import TextEncoder, minilm_path

# In reading order (the API page lists the names in this order, as the single module did): the encoders, the
# feature files, the cache.
__all__ = [  # noqa: RUF022
    "CLIPEncoder",
    "minilm_path",
    "TextEncoder",
    "ImageEncoder",
    "save_features",
    "load_features",
    "FeatureCache",
]
