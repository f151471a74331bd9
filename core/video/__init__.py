"""Video and frame sequences: face tracks, landmark smoothing, temporally consistent restoration, PyAV I/O.

Host-free like the rest of core/. PyAV (``av``) is only imported when a video file is read or written.
"""
from .restore import SequenceRestorer, SequenceResult, VideoOptions, restore_video, smooth_planned
from .smooth import OneEuroFilter, SmoothOptions, jitter, smooth_sequence
from .temporal import TemporalLookup, TrackColor
from .track import FaceTracker, TrackedFace, TrackOptions, appearance_embedding

__all__ = ["SequenceRestorer", "SequenceResult", "VideoOptions", "restore_video", "smooth_planned",
           "OneEuroFilter", "SmoothOptions", "jitter", "smooth_sequence", "TemporalLookup", "TrackColor",
           "FaceTracker", "TrackedFace", "TrackOptions", "appearance_embedding"]
