"""An 8000x8000 image: detect on a small copy, crop from the full image, bounded memory."""
import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json, resource, sys, warnings
    import numpy as np, torch
    sys.path.insert(0, sys.argv[1])
    from crop_fixtures import place_faces, similarity
    from facerefine.core.crop.options import CropOptions
    from facerefine.core.crop.step import align_faces, crop_faces
    from facerefine.core.paste.options import PasteOptions
    from facerefine.core.paste.step import paste_back
    from facerefine.core.types import RawDetections
    patch, det, _ = place_faces(3000, 3000, [similarity(5.0, 3.0, 200.0, 150.0)])
    image = torch.full((1, 8000, 8000, 3), 0.35)
    image[:, 1500:4500, 2000:5000] = patch
    shift = torch.tensor([2000.0, 1500.0])
    det = RawDetections((det.boxes.view(-1, 2, 2) + shift).view(-1, 4), det.scores, det.landmarks + shift)
    del patch
    if sys.argv[2]:  # a real portrait, 4x upscaled, in the middle of the canvas
        from facerefine.core.image_io import load_image
        face = load_image(sys.argv[2]).image.permute(0, 3, 1, 2)
        face = torch.nn.functional.interpolate(face, scale_factor=4, mode="bilinear").permute(0, 2, 3, 1)
        image[:, 4600:4600 + face.shape[1], 4600:4600 + face.shape[2]] = face.clamp(0, 1)
        del face
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = crop_faces(image, CropOptions(detector="mtcnn"))   # full detector on the 1280 copy
    crops = align_faces(image, [det])                               # known face, crop from full size
    out, masks = paste_back(image, crops, PasteOptions(color_correction="lab"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    inside = masks[0] > 0
    same_outside = bool(torch.equal(torch.where(inside[..., None], 0.0, out[0]),
                                    torch.where(inside[..., None], 0.0, image[0])))
    print(json.dumps({"extra_mib": (peak - base) / 1024, "image_mib": image.numel() * 4 / 2**20,
                      "crop": list(crops.crops.shape), "same_outside": same_outside,
                      "detected": len(found)}))
""")


def test_8000px_image_bounded_memory(tmp_path):
    from pathlib import Path

    from conftest import SHARED_DATA
    tests_dir = str(Path(__file__).resolve().parent)
    portraits = sorted((SHARED_DATA / "london" / "neutral").glob("*.jpg"))
    portrait = str(portraits[0]) if portraits else ""
    import os
    env = {**os.environ, "FACEREFINE_MAX_PIXELS": "70000000"}  # 64 MP: above the default limit, which this tests past
    proc = subprocess.run([sys.executable, "-c", SCRIPT, tests_dir, portrait], capture_output=True, text=True,
                          timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["crop"] == [1, 3, 512, 512] and res["same_outside"]
    if portrait:
        assert res["detected"] == 1  # the real face is found on the downscaled copy
    # the output image and its [H,W] mask plus small working buffers; never several full-size copies
    assert res["extra_mib"] < 2.5 * res["image_mib"], res
