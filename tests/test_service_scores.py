"""ui/service.py scores each face once before and once after restoration (the pipeline's scoring, read back by
``face_rows``; issue 24 item 5)."""
import pytest


def test_each_face_is_scored_once_before_and_once_after(monkeypatch):
    skimage_data = pytest.importorskip("skimage.data")
    from facerefine.core import score
    from facerefine.ui import service
    calls = []
    real = score.score_face_crops

    def counted(crops, *args, **kwargs):
        calls.append(len(crops))
        return real(crops, *args, **kwargs)
    monkeypatch.setattr(score, "score_face_crops", counted)
    settings = service.Settings(restorer="none", metric="face-niqe", device="cpu")
    outcome = service.restore_array(skimage_data.astronaut(), settings)
    assert outcome.ok and outcome.faces == 1, outcome.messages
    assert calls == [1, 1]  # before and after, one face each
    (row,) = outcome.rows
    assert row["metric"] == "face-niqe" and row["before"] is not None and row["after"] is not None
