"""Issue 26 item 3: a crowd is restored in bounded chunks of faces, so peak memory does not grow with the
number of faces (120 faces within 1.2x the peak of 8), and chunking changes no pixel."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from crop_fixtures import place_faces, similarity
from facerefine.core import pipeline
from facerefine.core.types import RawDetections
from facerefine.core.pipeline import RestoreOptions, build_steps, restore_images

TESTS = Path(__file__).resolve().parent


def crowd(faces: int, per_row: int = 11, cell: int = 96):
    """One image with a grid of distinct synthetic faces (~77 px each) and their exact detections."""
    image = torch.full((1, per_row * cell, per_row * cell, 3), 0.35)
    found = []
    for k in range(faces):
        tile, det, _ = place_faces(cell, cell, [similarity(0.15, 3 * (k % 5) - 6, 12, 8)], seed=k)
        x, y = (k % per_row) * cell, (k // per_row) * cell
        image[:, y:y + cell, x:x + cell] = tile
        shift = torch.tensor([float(x), float(y)])
        found.append(RawDetections((det.boxes.view(-1, 2, 2) + shift).view(-1, 4), det.scores, det.landmarks + shift))
    return image, RawDetections(*(torch.cat([getattr(d, f) for d in found]) for f in ("boxes", "scores", "landmarks")))


def first(det: RawDetections, n: int) -> RawDetections:
    return RawDetections(det.boxes[:n], det.scores[:n], det.landmarks[:n])


MEASURE = textwrap.dedent("""
    import ctypes, gc, json, sys
    import torch
    sys.path.insert(0, sys.argv[1])
    from test_nothing_lost_round2_crowds import crowd, first
    from facerefine.core import pipeline
    from facerefine.lab.bench.measure import PeakMemory
    image, det = crowd(120)                                 # the same image whatever the number of faces
    options = pipeline.RestoreOptions.from_values(restorer="none", device="cpu", color_correction="none")
    steps = pipeline.build_steps(options)
    for n in (1, int(sys.argv[2])):                         # 1 face first: everything loaded before measuring
        pipeline.detect_faces = lambda images, options, timings=None, n=n: [first(det, n)]
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)            # a baseline without the heap's free pages
        with PeakMemory(torch.device("cpu")) as peak:
            result = pipeline.restore_images(image, options, steps=steps)
    print(json.dumps({"faces": len(result.face_crops), "peak_mib": peak.peak / 2**20,
                      "increment_mib": peak.increment / 2**20, "method": peak.method}))
""")


def _peak(faces: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(TESTS), str(faces)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["faces"] == faces
    return res


def test_peak_memory_is_flat_in_the_number_of_faces():
    few, many = _peak(8), _peak(120)
    # before: each face kept its 512^2 crops, masks and latents until the end (~8 MB a face without a restorer,
    # ~30 MB with one): 120 faces took 1 GB more than 8 here. Now only the face records grow.
    assert many["peak_mib"] <= 1.2 * few["peak_mib"], (few, many)
    assert many["increment_mib"] - few["increment_mib"] < 1.0 * (120 - 8), (few, many)  # < 1 MB per extra face


def test_chunks_change_no_pixel(monkeypatch):
    """Lookup and identity-guided refine with the default restorer: 12 faces in chunks of 8 (8 + 4) give the
    same bits as all 12 at once (refine seeds each face by its index in the image, not in the chunk)."""
    image, det = crowd(12, per_row=4, cell=128)
    monkeypatch.setattr(pipeline, "detect_faces", lambda images, options, timings=None: [det])
    options = RestoreOptions.from_values(restorer="auto", device="cpu", crop_size=256, refine_steps=2, seed=3)
    steps = build_steps(options)
    assert steps.names == ["lookup", "refine"]
    chunked = restore_images(image, options, steps=steps, face_chunk=8, keep_crops=True)
    at_once = restore_images(image, options, steps=steps, face_chunk=64, keep_crops=True)
    assert torch.equal(chunked.images, at_once.images) and torch.equal(chunked.masks, at_once.masks)
    assert torch.equal(chunked.face_crops.crops, at_once.face_crops.crops)
    assert [f.bbox for f in chunked.face_crops.faces] == [f.bbox for f in at_once.face_crops.faces]
    assert len(chunked.face_crops) == 12
    assert torch.equal(chunked.latent.quantized, at_once.latent.quantized)
    assert not torch.equal(chunked.images, image)  # the faces were restored
    # without keep_crops the result keeps each face's record, not its pixels
    light = restore_images(image, options, steps=steps)
    assert torch.equal(light.images, at_once.images) and light.latent is None
    assert len(light.face_crops) == 12 and light.face_crops.crops.numel() == 0
