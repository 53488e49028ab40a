"""Write the small study fixtures of tests/data (run once from the repo root; the outputs are committed).

* ``chaos_small/``: CHAOS cases 1, 2, 3, 13 (../shared/data/chaos_mr, CC BY-SA 4.0), each cut to
  its 12 middle slices and resampled in-plane from 256x256 (1.25 mm) to 64x64 (5 mm), intensities
  rounded to int16, labels nearest-neighbour. Only enough to run the CHAOS study's ``--quick`` path.
* ``medpix_format/``: the MedPix 2.0 *file layout* (descriptions_train.jsonl, cases_train.jsonl,
  images/*.png) with OUR OWN content: 8 generated 64x64 grey images (a noisy bright disc) and
  captions written for them. No MedPix data (its licence forbids the copy).
"""
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2] / "shared" / "data"


def chaos_small(cases=(1, 2, 3, 13), slices=12, size=64):
    out = HERE / "chaos_small"
    out.mkdir(exist_ok=True)
    for case in cases:
        for kind, interp, pixel in (("image", sitk.sitkLinear, sitk.sitkInt16), ("label", sitk.sitkNearestNeighbor, sitk.sitkUInt8)):
            img = sitk.ReadImage(str(SHARED / "chaos_mr" / f"{kind}_{case}.nii.gz"))
            z0 = img.GetSize()[2] // 2 - slices // 2
            img = img[:, :, z0:z0 + slices]
            spacing = [img.GetSpacing()[0] * img.GetSize()[0] / size, img.GetSpacing()[1] * img.GetSize()[1] / size,
                       img.GetSpacing()[2]]
            res = sitk.Resample(img, [size, size, slices], sitk.Transform(), interp, img.GetOrigin(), spacing,
                                img.GetDirection(), 0, img.GetPixelID())
            sitk.WriteImage(sitk.Cast(res, pixel), str(out / f"{kind}_{case}.nii.gz"), True)


def medpix_format(n=8):
    from PIL import Image

    out = HERE / "medpix_format"
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    captions = ["Axial CT shows a large liver lesion.", "Both kidneys are normal on this MR.",
                "Splenomegaly on contrast enhanced CT.", "The right kidney has a cyst; the liver is normal.",
                "Chest CT shows a lung nodule.", "Pancreas mass with a dilated bile duct.",
                "MR of the abdomen: the spleen and liver are unremarkable.", "Left kidney stone on CT."]
    regions = ["Abdomen", "Reproductive and Urinary System", "Abdomen", "Reproductive and Urinary System",
               "Thorax", "Abdomen", "Abdomen", "Reproductive and Urinary System"]
    desc, cases = [], []
    for i in range(n):
        name = f"MPXT{i:02d}_synpic{i:05d}"
        yy, xx = np.mgrid[:64, :64]
        blob = ((yy - 32 - rng.integers(-8, 8)) ** 2 + (xx - 32 - rng.integers(-8, 8)) ** 2) < rng.integers(80, 300)
        pixels = (60 + 120 * blob + rng.normal(0, 10, (64, 64))).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(out / "images" / f"{name}.png")
        desc.append({"Type": "CT" if i % 2 else "MR", "U_id": f"MPXT{i:02d}", "image": name,
                     "Description": {"Caption": captions[i], "Plane": "Axial"}, "Location": "test",
                     "Location Category": regions[i]})
        cases.append({"U_id": f"MPXT{i:02d}", "Case": {"Findings": "Findings text for the test fixture."}})
    (out / "descriptions_train.jsonl").write_text("".join(json.dumps(d) + "\n" for d in desc))
    (out / "cases_train.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cases))


if __name__ == "__main__":
    chaos_small()
    medpix_format()
