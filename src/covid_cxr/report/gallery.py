"""The report's Grad-CAM gallery: the cases and overlays that evaluate wrote, embedded as data URIs."""

from __future__ import annotations

from covid_cxr.report.format import missing
from covid_cxr.report.images import png_uri
from covid_cxr.report.run_files import Evaluation, RunFiles


def gallery_section(files: RunFiles) -> dict:
    """One gallery per evaluation (test split first) from its gallery.json and gallery/*.png."""
    if not files.evaluations:
        return missing("no evaluation yet (run `covid-cxr evaluate` on the run)")
    galleries = [_gallery(e) for e in files.evaluations]
    quality = (files.internal.metrics if files.internal else files.evaluations[0].metrics).get("explanations")
    return {"galleries": galleries, "quality": _quality_rows(quality)}


def _gallery(evaluation: Evaluation) -> dict:
    """The cases of one evaluation, each with its overlay's data URI and a caption."""
    data = evaluation.gallery
    title = _title(evaluation)
    if data is None:
        return {"title": title, **missing(f"no gallery.json in {evaluation.folder.name}/ (evaluate again)")}
    classes = [
        {
            "label": c["label"],
            **{kind: [_case(evaluation, case) for case in c.get(kind, [])] for kind in ("right", "wrong")},
        }
        for c in data.get("classes", [])
    ]
    return {"title": title, "layer": data.get("layer", "?"), "classes": classes}


def _title(evaluation: Evaluation) -> str:
    """'the run's test split' or the external dataset's name and path."""
    d = evaluation.metrics.get("dataset", {})
    return str(d.get("source")) if not evaluation.external else f"{evaluation.name} ({d.get('source', '?')})"


def _case(evaluation: Evaluation, case: dict) -> dict:
    """One gallery item: overlay URI (None when it was not written), file name and caption."""
    uri = png_uri(evaluation.folder / case["image"]) if case.get("image") else None
    caption = f"true {case['true_class']} · predicted {case['predicted']} · p = {case['probability']:.2f}"
    if case.get("problem"):
        caption = f"{caption} · {case['problem']}"
    return {"uri": uri, "name": case.get("name", ""), "caption": caption}


def _quality_rows(quality: dict | None) -> list[tuple[str, str]]:
    """Explanation-quality figures that were measured (ROAD always; lesion scores only with lesion masks)."""
    if not quality:
        return []
    rows = [("Images scored", str(quality.get("images", "?")))]
    if quality.get("faithfulness_road") is not None:
        rows.append(
            (
                "ROAD faithfulness (> 0: the heatmap ranks pixels as the model uses them)",
                f"{quality['faithfulness_road']:.3f}",
            )
        )
    lesion = quality.get("lesion") or {}
    if "energy_in_mask" in lesion:
        rows += [
            ("Share of CAM energy inside the lesion masks", f"{lesion['energy_in_mask']:.3f}"),
            ("Lesions' share of the image (a random heatmap's score)", f"{lesion['lesion_share']:.3f}"),
            ("Pointing game: heatmap maximum inside the lesion", f"{lesion['pointing_hit_rate']:.2f}"),
        ]
    elif lesion.get("skipped"):
        rows.append(("Lesion-mask scores", f"skipped: {lesion['skipped']}"))
    else:
        rows.append(("Lesion-mask scores", "not measured: the data has no lesion masks"))
    return rows
