"""ComfyUI video mode: FaceRefine Restore Video takes an IMAGE batch as frames and works in chunks."""
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")


def test_node_is_registered_with_comfy_types():
    from facerefine.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    cls = NODE_CLASS_MAPPINGS["FaceRefineRestoreVideo"]
    assert NODE_DISPLAY_NAME_MAPPINGS["FaceRefineRestoreVideo"].startswith("FaceRefine")
    req = cls.INPUT_TYPES()["required"]
    assert req["images"][0] == "IMAGE" and "temporal" in req and "chunk" in req
    assert cls.RETURN_TYPES == ("IMAGE", "MASK", "STRING")


def test_chunks_and_out_of_memory_retry_keep_every_frame(monkeypatch):
    from facerefine.core.video import restore as video_restore
    from facerefine.nodes.video_nodes import FaceRefineRestoreVideo
    gen = torch.Generator().manual_seed(0)
    frames = torch.rand(7, 48, 64, 3, generator=gen)   # no face: frames come back unchanged
    calls = []
    real = video_restore.SequenceRestorer.process

    def flaky(self, chunk, tracks=None):
        calls.append(int(chunk.shape[0]))
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(self, chunk, tracks)
    monkeypatch.setattr(video_restore.SequenceRestorer, "process", flaky)
    out = FaceRefineRestoreVideo().restore(frames, restorer="none", chunk=4, detector="mtcnn", device="cpu")
    images, mask, report = out["result"] if isinstance(out, dict) else out
    assert images.shape == frames.shape and mask.shape == frames.shape[:3]
    assert torch.equal(images, frames)
    assert calls[0] == 4 and calls[1] == 2            # the failed chunk was retried in halves
    assert sum(calls[1:]) == 7 and "frames: 7" in report
