"""Crop step: detect faces (5 landmarks) and align them to the FFHQ template.

options.py (CropOptions) · step.py (detect_faces, align_faces, crop_faces) · detectors.py (MTCNN, RetinaFace)
· mtcnn.py (the embedded cascade) · align.py (template, similarity) · warp.py (affine warps)
· landmarks.py (the 5 landmarks of aligned crops, in crop fractions)
"""
