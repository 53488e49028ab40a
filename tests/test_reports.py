"""Report text for the organ-level objectives: sentences, organ assignment, abnormality dictionary, templates.

Real text: tests/data/iu_xray_sample.json (36 IU chest X-ray reports) and tests/data/roco_organ_sentences.tsv
(36 CC BY ROCO captions), each with hand-judged sentence -> organ labels; provenance in tests/data/README.md.
"""
import csv
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from nnunet_mosmos.reports import (DEFAULT_DICTIONARY_PATH, AbnormalityDictionary, AbnormalityDictionaryError,
                                   assign_sentences, generate_text, load_text_generator, split_sentences,
                                   template_report)
from nnunet_mosmos.tags import TagVocabulary, extract_tags

DATA = Path(__file__).parent / "data"


def iu_reports() -> list[dict]:
    return json.loads((DATA / "iu_xray_sample.json").read_text(encoding="utf-8"))["reports"]


def roco_captions() -> list[dict]:
    with open(DATA / "roco_organ_sentences.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    for row in rows:
        row["judged"] = [[] if part.strip() == "-" else part.strip().split(";")
                         for part in row["sentence_organs"].split(" | ")]
    return rows


def precision_recall(items) -> tuple[float, float]:
    """Micro precision/recall over (sentence, organ) pairs; ``items``: (report, judged organs per sentence)."""
    tp = fp = fn = 0
    for report, judged in items:
        sentences = split_sentences(report)
        assert len(sentences) == len(judged), report
        assigned = assign_sentences(report)
        for sentence, gold in zip(sentences, judged):
            predicted = {tag for tag, listed in assigned.items() if sentence in listed}
            tp += len(predicted & set(gold))
            fp += len(predicted - set(gold))
            fn += len(set(gold) - predicted)
    return tp / (tp + fp), tp / (tp + fn)


# --------------------------------------------------------------------------- split_sentences
def test_split_tricky_report():
    report = ("FINDINGS: The heart is normal. A 1.5 cm nodule in the right upper lobe, approx. 2 cm from the "
              "pleura, e.g. a granuloma vs. a scar, reviewed by Dr. Smith.\nIMPRESSION:\n1. No acute disease.  "
              "2. Nodule.. 3.")
    assert split_sentences(report) == [
        "The heart is normal.",
        "A 1.5 cm nodule in the right upper lobe, approx. 2 cm from the pleura, e.g. a granuloma vs. a scar, "
        "reviewed by Dr. Smith.",
        "No acute disease.",
        "Nodule.",
    ]


@pytest.mark.parametrize("report, expected", [
    ("Chest: The heart is enlarged. Left knee: No fracture.", ["The heart is enlarged.", "No fracture."]),
    ("LIVER: Normal. SPLEEN: 14 cm, enlarged.", ["LIVER: Normal.", "SPLEEN: 14 cm, enlarged."]),  # organ headers kept
    ("- Liver: normal size, no focal\n  lesion.\n- Gallbladder: stones",
     ["Liver: normal size, no focal lesion.", "Gallbladder: stones"]),
    ("Lungs clear\nHeart normal", ["Lungs clear", "Heart normal"]),
    ("Results called XXXX. XXXX XXXX p.m. XXXX, XXXX. XXXX.",
     ["Results called XXXX.", "XXXX XXXX p.m. XXXX, XXXX."]),
    ("Tumour of 4.2 cm; R.E.N.A.L. score was 9. In Table 2, case No. 9.",
     ["Tumour of 4.2 cm; R.E.N.A.L. score was 9.", "In Table 2, case No. 9."]),
    ("CT chest, axial image.Pulmonary trunk is enlarged.", ["CT chest, axial image.", "Pulmonary trunk is enlarged."]),
    ("Liver metastasis (arrow) B. decrease after treatment.",
     ["Liver metastasis (arrow)", "decrease after treatment."]),
    ("IMPRESSION", []),
    ("  \n ", []),
])
def test_split_rules(report, expected):
    assert split_sentences(report) == expected


def test_split_real_iu_reports_match_hand_checked_sentences():
    for record in iu_reports():
        sentences = split_sentences(record["report"])
        assert sentences == [text for text, _ in record["sentences"]], record["id"]
        for sentence in sentences:
            assert sentence and sentence == " ".join(sentence.split())
            assert not re.match(r"(?i)(findings|impression|chest|left knee|pression)\s*:", sentence)
            assert not re.match(r"\d\.\s", sentence)  # enumeration markers removed
    enumerated = next(r for r in iu_reports() if r["id"] == "CXR3260_IM-1547")
    assert split_sentences(enumerated["report"])[0] == "Cardiomegaly and/or pericardial effusion."
    measured = next(r for r in iu_reports() if r["id"] == "CXR1918_IM-0597")
    assert "There is a 1.5 cm nodular opacity projecting over left hilum." in split_sentences(measured["report"])


def test_split_rejects_non_text():
    with pytest.raises(TypeError, match="str"):
        split_sentences(None)


# --------------------------------------------------------------------------- assign_sentences
def test_assign_real_iu_report_exact():
    report = next(r for r in iu_reports() if r["id"] == "CXR1451_IM-0291")["report"]
    assert assign_sentences(report) == {
        "lung": ["Left lower lobe calcified granuloma.", "Mild medial right atelectasis.", "Mild emphysema."],
        "heart": ["Heart size normal."],
    }  # "No pleural effusion or pneumothorax." names no organ: dropped


def test_assign_real_reports_two_organs_and_synonyms():
    by_id = {r["id"]: r["report"] for r in iu_reports()}
    assigned = assign_sentences(by_id["CXR2384_IM-0942"])
    both = "The heart size and pulmonary vascularity appear within normal limits."
    assert both in assigned["heart"] and both in assigned["lung"]
    assert assign_sentences(by_id["CXR1083_IM-0058"])["esophagus"] == [
        "There are gastroesophageal junction and epigastric postsurgical changes."]
    captions = {row["roco_id"]: row["caption"] for row in roco_captions()}
    renal = assign_sentences(captions["ROCO_21793"])
    assert renal["kidney"] == renal["liver"] == ["High liver and renal uptake can also be seen."]
    hepatic = assign_sentences(captions["ROCO_23731"])
    assert hepatic == {"liver": ["CT shows a subcapsular hematoma in the right hepatic lobe."]}


def test_assign_keeps_report_order_and_negated_mentions():
    assigned = assign_sentences("No focal liver lesion. The spleen is enlarged. The liver is cirrhotic.")
    assert list(assigned) == ["liver", "spleen"]
    assert assigned["liver"] == ["No focal liver lesion.", "The liver is cirrhotic."]


def test_assign_no_organ_gives_empty_dict():
    assert assign_sentences("No pneumothorax or pleural effusion. Bony structures are intact.") == {}
    assert assign_sentences("") == {}


def test_assign_uses_the_given_vocabulary():
    vocab = TagVocabulary.from_dict({"tags": [{"name": "heart", "terms": ["heart", "cardiomediastinal"]},
                                              {"name": "prostate"}]})
    assert assign_sentences("Normal cardiomediastinal silhouette. Lungs clear.", vocab) == {
        "heart": ["Normal cardiomediastinal silhouette."]}
    # an organ header of the given vocabulary is kept, so the sentence still names its organ
    assert assign_sentences("PROSTATE: Enlarged, 60 mL. Bladder: normal.", vocab) == {
        "prostate": ["PROSTATE: Enlarged, 60 mL."]}


def test_assignment_quality_on_hand_judged_samples():
    """The numbers quoted in docs/report_text.md, pinned exactly (a change must update the docs)."""
    iu = precision_recall((r["report"], [organs for _, organs in r["sentences"]]) for r in iu_reports())
    roco = precision_recall((row["caption"], row["judged"]) for row in roco_captions())
    assert iu == pytest.approx((103 / 105, 103 / 121))
    assert roco == pytest.approx((82 / 82, 82 / 90))


def test_roco_sample_is_cc_by_or_cc0_only():
    assert {row["licence"] for row in roco_captions()} <= {"CC BY", "CC0"}


# --------------------------------------------------------------------------- abnormality dictionary
@pytest.fixture(scope="module")
def dictionary():
    return AbnormalityDictionary.default()


def test_default_dictionary_covers_the_vocabulary(dictionary):
    assert set(TagVocabulary.default().names) | {"_default"} == set(dictionary.entries)
    for organ, entry in dictionary.entries.items():
        for polarity in ("normal", "abnormal"):
            assert 3 <= len(entry[polarity]) <= 6, (organ, polarity)
            if organ != "_default":  # every phrase reads as its own state and names its organ
                for phrase in entry[polarity]:
                    assert dictionary.polarity(organ, phrase) == polarity, phrase
                    assert organ in extract_tags(phrase), phrase


@pytest.mark.parametrize("organ, sentence, expected", [
    ("liver", "No focal liver lesion.", "normal"),
    ("liver", "The liver is enlarged.", "abnormal"),
    ("liver", "The liver is unremarkable.", "normal"),
    ("heart", "The heart is not enlarged.", "normal"),
    ("heart", "The heart is not normal.", "abnormal"),
    ("lung", "Pneumothorax is not seen in the right lung.", "normal"),
    ("lung", "Cannot exclude pneumonia in the left lung.", "abnormal"),
    ("lung", "No interval change in the right upper lobe nodule.", "abnormal"),
    ("heart", "Heart size normal, lung nodule.", "normal"),
    ("lung", "Heart size normal, lung nodule.", "abnormal"),
    ("spleen", "The liver is enlarged and the spleen is normal.", "normal"),
    ("liver", "The liver is seen.", None),
    # several sentences of one organ joined (as the organ-grounded objective passes them)
    ("liver", "No focal liver lesion. The liver is enlarged.", "abnormal"),
    ("liver", "No focal liver lesion. Hepatic veins are patent.", "normal"),
    # real IU X-ray sentences
    ("lung", "No focal consolidation, suspicious pulmonary opacity, pneumothorax or definite pleural effusion.",
     "normal"),
    ("lung", "The lungs are free of focal airspace disease.", "normal"),
    ("heart", "The cardiac silhouette is overall enlarged.", "abnormal"),
    ("lung", "Left lower lobe calcified granuloma.", "abnormal"),
    ("aorta", "Aorta is tortuous and ectatic.", "abnormal"),
    ("trachea", "The trachea is midline.", "normal"),
])
def test_polarity(dictionary, organ, sentence, expected):
    assert dictionary.polarity(organ, sentence) == expected


def test_negatives_are_the_opposite_state_of_the_same_organ(dictionary):
    normal = dictionary.negatives("liver", "No focal liver lesion.", k=3)
    abnormal = dictionary.negatives("liver", "The liver is enlarged.", k=2)
    assert len(normal) == 3 and len(set(normal)) == 3 and len(abnormal) == 2
    assert all(dictionary.polarity("liver", p) == "abnormal" and "liver" in extract_tags(p) for p in normal)
    assert all(dictionary.polarity("liver", p) == "normal" and "liver" in extract_tags(p) for p in abnormal)
    undecided = dictionary.negatives("kidney", "Both kidneys are seen.", k=2)
    assert all(p in dictionary.entries["kidney"]["abnormal"] for p in undecided)


def test_negatives_deterministic_without_rng_and_exactly_k(dictionary):
    first = dictionary.negatives("spleen", "The spleen is normal.", k=9)
    assert first == dictionary.negatives("spleen", "The spleen is normal.", k=9) and len(first) == 9
    drawn = dictionary.negatives("spleen", "The spleen is normal.", k=2, rng=np.random.default_rng(0))
    assert drawn == dictionary.negatives("spleen", "The spleen is normal.", k=2, rng=np.random.default_rng(0))
    assert dictionary.negatives("spleen", "The spleen is normal.", k=0) == []


def test_negatives_default_entry_names_the_organ(dictionary):
    negatives = dictionary.negatives("duodenum", "The duodenum is unremarkable.", k=2)
    assert len(negatives) == 2 and all("duodenum" in p and "{organ}" not in p for p in negatives)
    assert all(dictionary.polarity("duodenum", p) == "abnormal" for p in negatives)


def _edited_copy(tmp_path, edit) -> Path:
    data = json.loads(DEFAULT_DICTIONARY_PATH.read_text(encoding="utf-8"))
    edit(data)
    path = tmp_path / "my_dictionary.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_from_json_loads_an_edited_copy(tmp_path):
    def add_phrase(d):
        d["organs"]["liver"]["abnormal"].append("a liver abscess")
    loaded = AbnormalityDictionary.from_json(_edited_copy(tmp_path, add_phrase))
    assert "a liver abscess" in loaded.entries["liver"]["abnormal"]

    def prostate_only(d):
        d["organs"] = {"prostate": {"normal": ["the prostate is normal"], "abnormal": ["the prostate is enlarged"]},
                       "_default": d["organs"]["_default"]}
    vocab = TagVocabulary.from_dict({"tags": [{"name": "prostate"}]})
    custom = AbnormalityDictionary.from_json(_edited_copy(tmp_path, prostate_only), vocabulary=vocab)
    assert custom.negatives("prostate", "The prostate is normal.", k=1) == ["the prostate is enlarged"]
    with pytest.raises(AbnormalityDictionaryError, match=r"organs \['prostate'\] are not tags"):
        AbnormalityDictionary.from_json(_edited_copy(tmp_path, prostate_only))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["organs"].update({"pancreatic duct": {"normal": ["x"], "abnormal": ["y"]}}),
     r"organs \['pancreatic duct'\] are not tags"),
    (lambda d: d["organs"]["liver"].update({"abnormal": []}), r"organ 'liver' 'abnormal' must be a non-empty list"),
    (lambda d: d["organs"]["liver"].update({"normal": ["the liver is normal", ""]}), "non-empty strings"),
    (lambda d: d["organs"]["liver"]["normal"].append("the liver is enlarged"),
     "listed as 'normal' but the cues read it as 'abnormal'"),
    (lambda d: d["organs"]["liver"]["normal"].append("the spleen is normal"), "does not name the organ"),
    (lambda d: d["organs"]["_default"]["normal"].append("the organ is normal"), "placeholder"),
    (lambda d: d["cues"]["abnormal"].append("mass("), "not a valid regular expression"),
    (lambda d: d["organs"].pop("_default"), "'_default' entry"),
])
def test_from_json_errors_name_the_file_and_problem(tmp_path, edit, message):
    path = _edited_copy(tmp_path, edit)
    with pytest.raises(AbnormalityDictionaryError, match=message) as error:
        AbnormalityDictionary.from_json(path)
    assert str(path) in str(error.value)


def test_from_json_bad_json_and_missing_file(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"organs": {', encoding="utf-8")
    with pytest.raises(AbnormalityDictionaryError, match=f"{re.escape(str(broken))} is not readable JSON"):
        AbnormalityDictionary.from_json(broken)
    with pytest.raises(AbnormalityDictionaryError, match="does not exist"):
        AbnormalityDictionary.from_json(tmp_path / "missing.json")
    assert issubclass(AbnormalityDictionaryError, ValueError)


# --------------------------------------------------------------------------- template text and generator hook
def test_template_report_contents_and_order():
    text = template_report({"kidney_right": 151.2, "liver": 1514.0, "spleen": 180.4, "adrenal_gland_left": 0.4,
                            "gallbladder": 0.0}, modality="CT")
    assert text == ("CT volume. Visible organs: liver (1510 mL), spleen (180 mL), right kidney (150 mL), "
                    "left adrenal gland (small).")
    assert extract_tags(text) == {"liver", "spleen", "kidney", "adrenal gland"}


def test_template_report_tags_extractable_for_real_label_names():
    names = json.loads((DATA / "class_map_total_and_total_mr.json").read_text())["total"].values()
    organs = {name: 10.0 + i for i, name in enumerate(names)}
    text = template_report(organs, modality="MR")
    assert text.startswith("MR volume. Visible organs: ")
    for organ in ("liver", "spleen", "kidney", "pancreas", "gallbladder", "stomach", "aorta", "lung", "heart",
                  "colon", "adrenal gland", "esophagus", "small intestine", "inferior vena cava"):
        assert organ in extract_tags(text), organ


def test_template_report_metadata_and_never_empty():
    assert template_report({}) == "Medical image."
    assert template_report({}, metadata={"PatientName": "Doe^Jane", "SeriesDescription": "ABDOMEN PV 3mm"}) == \
        "Medical image. Description: abdomen pv 3mm."
    assert template_report({"liver": 1500}, metadata={"modality": "CT", "body_part": "ABDOMEN"}) == \
        "CT volume. Visible organs: liver (1500 mL). Body region: abdomen."
    with pytest.raises(ValueError, match="'liver'.*finite"):
        template_report({"liver": float("nan")})


def test_generate_text_uses_the_context():
    context = {"image": "case_001.nii.gz", "organs": {"spleen": 200.0, "kidney_left": 160.0}, "modality": "CT",
               "spacing": (3.0, 1.0, 1.0), "shape": (40, 128, 128), "metadata": {}}
    assert generate_text(context) == "CT volume. Visible organs: spleen (200 mL), left kidney (160 mL)."
    assert generate_text({"organs": {}, "modality": None, "metadata": {}}) == "Medical image."


def test_load_text_generator_specs(tmp_path):
    assert load_text_generator(None) is generate_text
    by_module = load_text_generator("nnunet_mosmos.reports:generate_text")
    assert by_module({"organs": {"liver": 1.0}}) == "Medical image. Visible organs: liver (1 mL)."
    script = tmp_path / "my_captioner.py"
    script.write_text("def caption(context):\n    return 'Scan of ' + context['image']\n"
                      "def silent(context):\n    return ''\nNOT_CALLABLE = 3\n", encoding="utf-8")
    from_file = load_text_generator(f"{script}:caption")
    assert from_file({"image": "a.nii.gz"}) == "Scan of a.nii.gz"
    assert pickle.loads(pickle.dumps(from_file))({"image": "b"}) == "Scan of b"  # data-loader workers
    with pytest.raises(ValueError, match="silent.*returned ''.*non-empty str"):
        load_text_generator(f"{script}:silent")({"image": "a"})


@pytest.mark.parametrize("spec, message", [
    ("no_such_module_xyz:generate", "cannot import 'no_such_module_xyz'"),
    ("nnunet_mosmos.reports:no_such_function", "has no attribute 'no_such_function'"),
    ("nnunet_mosmos.reports:DICTIONARY_FORMAT", "not callable"),
    ("nnunet_mosmos.reports", "must look like 'package.module:function'"),
    ("missing_dir/captioner.py:caption", "cannot import"),
])
def test_load_text_generator_errors(spec, message):
    with pytest.raises(ValueError, match=message) as error:
        load_text_generator(spec)
    assert spec in str(error.value) and "def generate(context: dict) -> str" in str(error.value)
