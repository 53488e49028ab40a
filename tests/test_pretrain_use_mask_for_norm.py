"""The plans' use_mask_for_norm (issue 12.5): with -d/-c, pre-training normalises as nnU-Net's preprocessing does
(z-score inside the non-zero region, nnU-Net's cropping mask), in 2D and in 3D, checked against nnU-Net's own
DefaultPreprocessor on the same image."""
import json
from copy import deepcopy

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from plans_fixtures import configuration
from pretrain.config import PretrainConfig
from pretrain.data import build_datasets
from pretrain.datasets import read_image
from pretrain.export import preprocessing
from pretrain.normalization import Normalizer
from pretrain.pairs import Pair
from pretrain.plans import encoder_spec

RESAMPLING = {"resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
              "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
              "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
              "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
              "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                     "force_separate_z": None}}


def _plans(use_mask: bool) -> dict:
    configs = {}
    for name, dim in (("2d", 2), ("3d_fullres", 3)):
        cfg = deepcopy(configuration(dim).configuration)
        cfg.update(RESAMPLING, normalization_schemes=["ZScoreNormalization"], use_mask_for_norm=[use_mask])
        configs[name] = cfg
    return {"dataset_name": "Dataset951_MRI", "plans_name": "nnUNetPlans", "configurations": configs,
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "foreground_intensity_properties_per_channel": {"0": {"mean": 0.0, "std": 1.0, "percentile_00_5": 0.0,
                                                                  "percentile_99_5": 1.0}}}


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    folder = tmp_path / "pre" / "Dataset951_MRI"
    folder.mkdir(parents=True)
    (folder / "nnUNetPlans.json").write_text(json.dumps(_plans(True)))
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1"}, "labels": {"background": 0}}))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    return folder


def brain_like(seed=0) -> np.ndarray:
    """MRI after skull stripping: a bright blob with a dark hole inside, exactly 0 around it."""
    rng = np.random.default_rng(seed)
    volume = np.zeros((12, 40, 40), np.float32)
    volume[2:11, 6:34, 8:30] = rng.normal(600, 120, (9, 28, 22))
    volume[6, 15:18, 15:18] = 0  # a hole: nnU-Net's mask fills it (binary_fill_holes), so it is normalised
    return volume


def nnunet_preprocessed(image: np.ndarray, config: str) -> tuple[np.ndarray, tuple]:
    """nnU-Net's own preprocessing of one case (crop to the non-zero region + normalisation; spacing unchanged)."""
    plans = PlansManager(_plans(True))
    data = image[None] if image.ndim == 3 else image[None, None]
    spacing = [1.0] * 3
    out, _, props = DefaultPreprocessor(verbose=False).run_case_npy(
        data, None, {"spacing": spacing}, plans, plans.get_configuration(config), {"labels": {"background": 0}})
    return out[0], tuple(slice(a, b) for a, b in props["bbox_used_for_cropping"])


def test_3d_normaliser_equals_nnunet_preprocessing_inside_the_mask_and_is_zero_outside():
    volume = brain_like()
    ours = Normalizer("ZScoreNormalization", use_mask_for_norm=True)(volume)
    expected, box = nnunet_preprocessed(volume, "3d_fullres")
    np.testing.assert_allclose(ours[box], expected, rtol=1e-5, atol=1e-5)
    outside = np.ones(volume.shape, bool)
    outside[box] = False
    assert not ours[outside].any()
    assert ours[6, 16, 16] != 0  # the filled hole is normalised with the rest
    plain = Normalizer("ZScoreNormalization")(volume)  # what pre-training did before: the zeros counted too
    assert abs(float(plain[box].mean())) > 0.3 and abs(float(ours[box][expected != 0].mean())) < 0.1


def test_2d_images_and_slices_use_the_same_semantics(tmp_path):
    volume = brain_like(1)
    normalize = Normalizer("ZScoreNormalization", use_mask_for_norm=True)
    image = np.clip(volume[6] / 4, 0, 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "slice.png")
    expected, box = nnunet_preprocessed(image.astype(np.float32), "2d")
    ours = read_image(tmp_path / "slice.png", None, normalize)
    np.testing.assert_allclose(ours[box[1:]], expected[0], rtol=1e-5, atol=1e-5)
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(tmp_path / "mri.nii.gz"))
    middle = read_image(tmp_path / "mri.nii.gz", None, normalize)  # a volume's slice: normalised as a whole volume
    whole, box3 = nnunet_preprocessed(volume, "3d_fullres")
    np.testing.assert_allclose(middle[box3[1:]], whole[6 - box3[0].start], rtol=1e-5, atol=1e-5)


def test_plans_flag_reaches_both_routes_and_the_checkpoint(dataset, tmp_path):
    spec2, spec3 = encoder_spec("951", "2d"), encoder_spec("951", "3d_fullres", dim=3)
    assert spec2.normalization["use_mask_for_norm"] and spec3.normalization["use_mask_for_norm"]
    assert preprocessing(spec2)["use_mask_for_norm"] and preprocessing(spec3)["use_mask_for_norm"]
    sitk.WriteImage(sitk.GetImageFromArray(brain_like()), str(tmp_path / "mri.nii.gz"))
    pairs = [Pair("mri", tmp_path / "mri.nii.gz", "MRI of the brain", (0,))]
    cfg = PretrainConfig(dataset="951", configuration="3d_fullres")
    train2, _, _ = build_datasets(cfg, spec2, 2, pairs, [], _vocab(), False, False)
    train3, _, _ = build_datasets(cfg, spec3, 3, pairs, [], _vocab(), False, False)
    assert train2.normalize.use_mask_for_norm and train3.normalizer.use_mask_for_norm
    assert "non-zero region" in train3.normalizer.describe()
    (dataset / "nnUNetPlans.json").write_text(json.dumps(_plans(False)))
    assert not encoder_spec("951", "2d").normalization["use_mask_for_norm"]
    assert build_datasets(cfg, encoder_spec("951", "2d"), 2, pairs, [], _vocab(), False, False)[0].normalize is None


def _vocab():
    from nnunet_mosmos.tags import TagVocabulary

    return TagVocabulary.default()
