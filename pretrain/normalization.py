"""nnU-Net's intensity normalisation, by scheme name, for pre-training inputs (2D and 3D).

The encoder should see at pre-training the value range ``nnUNetv2_train`` feeds it, so this calls
nnU-Net's own normalisation classes (``CTNormalization`` with the dataset fingerprint's statistics,
``ZScoreNormalization``, ...) rather than re-implementing them. The whole image or volume is
normalised before cropping, as nnU-Net normalises before resampling (and z-score needs
whole-volume statistics).
"""
from __future__ import annotations

import numpy as np

__all__ = ["CT_KEYS", "Normalizer"]


def _normalization_class(scheme: str):
    from nnunetv2.preprocessing.normalization import default_normalization_schemes as schemes
    from nnunetv2.preprocessing.normalization.map_channel_name_to_normalization import (
        channel_name_to_normalization_mapping)

    cls = getattr(schemes, scheme, None) or channel_name_to_normalization_mapping.get(scheme.casefold())
    if not (isinstance(cls, type) and issubclass(cls, schemes.ImageNormalization)) or cls is schemes.ImageNormalization:
        known = sorted(n for n, c in vars(schemes).items() if isinstance(c, type)
                       and issubclass(c, schemes.ImageNormalization) and c is not schemes.ImageNormalization)
        raise ValueError(f"unknown normalisation scheme {scheme!r}; nnU-Net's schemes are {known} "
                         f"(or the channel names {sorted(channel_name_to_normalization_mapping)})")
    return cls


CT_KEYS = ("mean", "std", "percentile_00_5", "percentile_99_5")


class Normalizer:
    """nnU-Net's normalisation of one channel, by scheme name, as in a plans file's ``normalization_schemes``.

    ``intensity_properties`` is the fingerprint's ``foreground_intensity_properties_per_channel[c]``
    (CTNormalization clips to its 0.5/99.5 percentiles and z-scores with its mean/std, fixed for the
    dataset; ZScoreNormalization uses each volume's own statistics). ``use_mask_for_norm`` mirrors
    the plans' flag: z-score over the non-zero region only (nnU-Net's ``create_nonzero_mask``).
    """

    def __init__(self, scheme: str = "ZScoreNormalization", intensity_properties: dict | None = None,
                 use_mask_for_norm: bool = False):
        from nnunetv2.preprocessing.normalization.default_normalization_schemes import CTNormalization

        self.scheme_class = _normalization_class(scheme)
        self.scheme = self.scheme_class.__name__
        self.intensity_properties = dict(intensity_properties or {})
        self.use_mask_for_norm = bool(use_mask_for_norm)
        if issubclass(self.scheme_class, CTNormalization):
            missing = [k for k in CT_KEYS if k not in self.intensity_properties]
            if missing:
                raise ValueError(f"{self.scheme} needs the dataset fingerprint's intensity statistics "
                                 f"(foreground_intensity_properties_per_channel['0'] = {{{', '.join(CT_KEYS)}}}; "
                                 f"missing {missing}): pass -d DATASET so its dataset_fingerprint.json is read "
                                 "(run nnUNetv2_extract_fingerprint first), or use ZScoreNormalization")
        self._impl = self.scheme_class(use_mask_for_norm=self.use_mask_for_norm,
                                       intensityproperties=self.intensity_properties)

    def __call__(self, array: np.ndarray, inplace: bool = False) -> np.ndarray:
        """Normalised float32 copy (``inplace=True`` reuses a float32 array: saves one volume of memory)."""
        array = np.asarray(array)
        array = array.astype(np.float32, copy=not (inplace and array.dtype == np.float32))
        from nnunet_mosmos.slices import nonzero_region

        return self._impl.run(array, nonzero_region(array) if self.use_mask_for_norm else None)

    def describe(self) -> str:
        p = self.intensity_properties
        if all(k in p for k in CT_KEYS) and self.scheme == "CTNormalization":
            return (f"CTNormalization (clip [{p['percentile_00_5']:.6g}, {p['percentile_99_5']:.6g}], "
                    f"mean {p['mean']:.6g}, std {p['std']:.6g})")
        return self.scheme + (" (per volume, non-zero region)" if self.use_mask_for_norm else
                              " (per volume)" if self.scheme == "ZScoreNormalization" else "")

    def as_dict(self) -> dict:
        """What a checkpoint needs to rebuild this normaliser."""
        numbers = {k: float(v) for k, v in self.intensity_properties.items() if isinstance(v, (int, float))}
        return {"scheme": self.scheme, "intensity_properties": numbers, "use_mask_for_norm": self.use_mask_for_norm}
