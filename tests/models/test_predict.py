"""``radimagenet predict`` and the pyfunc flavor on local model folders (no stack): one row per input,
errors per row, Grad-CAM overlays, segmentation masks, and the pyfunc answering the same numbers."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from PIL import Image

from helpers_models import BROKEN, CLASSES, mixed_inputs, model_dir, probabilities, read_csv
from radimagenet.cli import main
from radimagenet.errors import ConfigError
from radimagenet.models.inference import load_predictor
from radimagenet.models.predict import predict_files


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return mixed_inputs(tmp_path_factory.mktemp("predict"))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return model_dir(tmp_path_factory.mktemp("model") / "classifier")


def test_predict_mixed_folder_rows_for_all(inputs, classifier, tmp_path, capsys):
    folder, kinds = inputs
    out = tmp_path / "predictions.csv"
    overlays = tmp_path / "cams"
    assert main(["predict", str(classifier), str(folder), "--out", str(out), "--batch-size", "4",
                 "--gradcam", str(overlays), "--no-progress"]) == 0
    assert f"{len(kinds)} input(s): {len(kinds) - 2} predicted, 2 unreadable" in capsys.readouterr().out
    rows = read_csv(out)
    assert list(rows[0]) == ["path", *(f"p_{c}" for c in CLASSES), "predicted", "error", "gradcam"]
    assert sorted(r["path"].removeprefix(f"{folder}/") for r in rows) == sorted(kinds)
    by_name = {r["path"].removeprefix(f"{folder}/"): r for r in rows}
    assert by_name[BROKEN[0]]["error"].startswith("unsupported_format: ")
    assert by_name[BROKEN[1]]["error"].split(":")[0] in ("decode_failed", "truncated", "unreadable")
    good = [r for name, r in by_name.items() if kinds[name] != "broken"]
    assert {kinds[n] for n in by_name} == {"dicom", "png", "jpeg", "broken"}
    assert all(r["error"] == "" and r["predicted"] in CLASSES for r in good)
    probs = probabilities(good, CLASSES)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5) and (probs > 0).all()
    for r in good:
        with Image.open(r["gradcam"]) as im:
            assert im.size == (64, 64) and im.mode == "RGB"  # the stored image (ingest's 64 px), coloured
    assert all(by_name[b]["p_" + CLASSES[0]] == "" and not by_name[b]["gradcam"] for b in BROKEN)

    # the PNG copy of a DICOM decodes to the same pixels, so it gets the same probabilities
    png = by_name["sub/image0.png"]
    dcm = by_name[sorted(n for n in kinds if kinds[n] == "dicom")[0]]
    assert probabilities([png], CLASSES) == pytest.approx(probabilities([dcm], CLASSES), abs=1e-6)


def test_predict_batches_do_not_change_the_numbers(inputs, classifier, tmp_path):
    folder, _ = inputs
    predictor = load_predictor(str(classifier), device="cpu")
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    predict_files(predictor, [str(folder)], str(a), batch_size=1, progress=False)
    predict_files(predictor, [str(folder)], str(b), batch_size=64, progress=False)
    ra, rb = read_csv(a), read_csv(b)
    ok = [i for i, r in enumerate(ra) if not r["error"]]
    assert np.abs(probabilities([ra[i] for i in ok], CLASSES) - probabilities([rb[i] for i in ok], CLASSES)).max() < 1e-5


def test_segmentation_model_writes_masks(inputs, tmp_path):
    """No segmentation model can be registered yet: a U-Net record built here drives the branch."""
    folder, kinds = inputs
    unet = model_dir(tmp_path / "unet", task="segmentation")
    out = tmp_path / "seg.csv"
    assert main(["predict", str(unet), str(folder), "--out", str(out), "--no-progress"]) == 0
    rows = read_csv(out)
    assert list(rows[0]) == ["path", "lesion_fraction", "mask", "error"] and len(rows) == len(kinds)
    good = [r for r in rows if not r["error"]]
    assert len(good) == len(kinds) - 2
    predictor = load_predictor(str(unet), device="cpu")
    for r in good:
        with Image.open(r["mask"]) as im:
            mask = np.asarray(im)
        assert mask.shape == predictor.read(r["path"]).shape  # the file's own size
        assert set(np.unique(mask)) <= {0, 255}
        assert float(r["lesion_fraction"]) == pytest.approx((mask > 0).mean())
    assert str(tmp_path / "seg-masks") in good[0]["mask"]
    # the pyfunc answer of a segmentation model: the same fraction, the mask as a base64 PNG at model size
    import io

    import pandas as pd

    from radimagenet.models.serving import predict_frame

    answer = predict_frame(predictor, pd.DataFrame({"image": [open(good[0]["path"], "rb").read(), b"junk"]}))
    assert list(answer.columns) == ["lesion_fraction", "mask", "error"] and answer["error"][1]
    with Image.open(io.BytesIO(base64.b64decode(answer["mask"][0]))) as im:
        assert im.size == (48, 48) and float(answer["lesion_fraction"][0]) == pytest.approx((np.asarray(im) > 0).mean())
    with pytest.raises(ConfigError, match="segmentation"):
        predict_files(predictor, [str(folder)], str(tmp_path / "x.csv"), gradcam_dir=str(tmp_path / "cams"))


def test_pyfunc_folder_answers_as_predict(inputs, classifier, tmp_path):
    """The pyfunc model registry.register logs (built here in a local folder) answers bytes and base64
    text with the numbers predict writes."""
    import mlflow.pyfunc
    import pandas as pd

    from radimagenet.models import registry
    from radimagenet.models.serving import package

    folder, kinds = inputs
    pyfunc_dir = package(str(classifier), str(tmp_path / "pyfunc"))
    record, _ = registry.load_dir(pyfunc_dir)  # the notebook loader reads the pyfunc layout too
    assert record.classes == CLASSES
    out = tmp_path / "p.csv"
    predict_files(load_predictor(str(classifier), device="cpu"), [str(folder)], str(out), progress=False)
    rows = read_csv(out)
    payload = [open(r["path"], "rb").read() for r in rows]
    model = mlflow.pyfunc.load_model(pyfunc_dir)
    for column in (payload, [base64.b64encode(b).decode() for b in payload]):
        answer = model.predict(pd.DataFrame({"image": column}))
        assert list(answer.columns) == [*(f"p_{c}" for c in CLASSES), "predicted", "error"]
        numeric = answer.select_dtypes("number").columns.tolist()
        assert numeric == [f"p_{c}" for c in CLASSES]
        ok = [i for i, r in enumerate(rows) if not r["error"]]
        assert np.array_equal(answer[numeric].to_numpy()[ok], probabilities([rows[i] for i in ok], CLASSES))
        assert answer["predicted"].tolist() == [r["predicted"] for r in rows]
        assert [e.split(":")[0] for e in answer["error"]] == [r["error"].split(":")[0] for r in rows]


def test_inputs_that_do_not_exist_are_rows(classifier, tmp_path):
    out = tmp_path / "missing.csv"
    predict_files(load_predictor(str(classifier), device="cpu"), [str(tmp_path / "nope.dcm")], str(out),
                  progress=False)
    assert read_csv(out)[0]["error"].startswith("missing_file: ")
