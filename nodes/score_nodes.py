"""ComfyUI nodes: Load IQA Metric (FACEREFINE_IQA) and Quality Score."""
from __future__ import annotations

from ..core.score.metrics import AUTO, METRICS
from . import conventions as nc

METRIC_CHOICES = [AUTO] + list(METRICS)
METRIC_TOOLTIP = ("No-reference quality metric. auto = face-iqa (ours, the default critic; offline). face-niqe "
                  "(ours, older) and piqe also work offline; the others need pyiqa weights in models/pyiqa.")


def _load_metric(name: str, device: str, face_input: bool = True):
    from ..core.score import get_metric
    nc.register_model_folders()
    return get_metric(name, nc.get_device(device), face_input=face_input)


class FaceRefineLoadIQA:
    @classmethod
    def INPUT_TYPES(cls):
        nc.register_model_folders()
        return {"required": {
            "metric": (METRIC_CHOICES, {"default": AUTO, "tooltip": METRIC_TOOLTIP}),
            "device": (nc.DEVICE_CHOICES, {"default": "auto", "tooltip": nc.TOOLTIPS["device"]}),
        }}

    RETURN_TYPES = ("FACEREFINE_IQA",)
    RETURN_NAMES = ("iqa",)
    FUNCTION = "load"
    CATEGORY = nc.CATEGORY_LOADERS
    DESCRIPTION = "Loads a no-reference image-quality metric once, for Quality Score and quality-steered steps."

    def load(self, metric: str, device: str = "auto"):
        return (_load_metric(metric, device),)


class FaceRefineQualityScore:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "metric": (METRIC_CHOICES, {"default": AUTO, "tooltip": METRIC_TOOLTIP}),
            },
            "optional": {
                "face_crops": ("FACE_CROPS", {"tooltip": "Faces to score (each aligned crop gets a score)."}),
                "image": ("IMAGE", {"tooltip": "Whole images to score when no faces are connected."}),
                "iqa": ("FACEREFINE_IQA", {"tooltip": "A loaded metric; overrides the metric choice."}),
                "device": (nc.DEVICE_CHOICES, {"default": "auto", "tooltip": nc.TOOLTIPS["device"]}),
            },
        }

    RETURN_TYPES = ("FACE_CROPS", "FLOAT", "STRING")
    RETURN_NAMES = ("face_crops", "score", "report")
    OUTPUT_TOOLTIPS = ("The input faces with the score attached.",
                       "Mean normalised score, 0..1, higher = better.",
                       "One line per face or image: raw and normalised score.")
    FUNCTION = "score"
    CATEGORY = nc.CATEGORY_STEPS
    DESCRIPTION = ("Scores each face (FACE_CROPS) or each image (IMAGE) with a no-reference quality metric: "
                   "raw value and a 0..1 score where higher is better.")

    def score(self, metric: str = AUTO, face_crops=None, image=None, iqa=None, device: str = "auto"):
        from ..core.score import score_face_crops, score_images
        from ..core.types import FaceCrops
        from ..errors import FaceRefineError

        if face_crops is None and image is None:
            raise FaceRefineError("Quality Score needs face_crops or an image connected")
        use_faces = face_crops is not None
        m = iqa if iqa is not None else _load_metric(metric, device, face_input=use_faces)
        if use_faces:
            if face_crops.is_empty:
                return nc.node_output((face_crops, 0.0, f"{m.name}: no faces"))
            total = len(face_crops)
            progress = nc.Progress(total)

            def run(start: int, stop: int):
                part = score_face_crops(face_crops.select(list(range(start, stop))), m)
                progress.update(stop - start)
                return part.faces

            faces = tuple(f for chunk in nc.map_batches(run, total, m.batch_size) for f in chunk)
            scored = face_crops.with_faces(faces)
            scores = scored.latest_quality(m.name)
            labels = [f"face {i} (image {f.image_index})" for i, f in enumerate(scored.faces)]
            out_crops = scored
            ui = nc.quality_ui(face_crops, scored)  # before: an earlier score of this metric, if any
        else:
            scores = score_images(image, m)
            labels = [f"image {i}" for i in range(len(scores))]
            out_crops = FaceCrops.empty()
            ui = None
        lines = [f"{label}: {q.metric} raw {q.raw:.4f} ({'lower' if q.lower_better else 'higher'} is better), "
                 f"normalized {q.normalized:.3f}" for label, q in zip(labels, scores)]
        mean = sum(q.normalized for q in scores) / len(scores)
        return nc.node_output((out_crops, float(mean), "\n".join(lines)), ui)


NODES = {
    "FaceRefineLoadIQA": (FaceRefineLoadIQA, "FaceRefine Load IQA Metric"),
    "FaceRefineQualityScore": (FaceRefineQualityScore, "FaceRefine Quality Score"),
}
