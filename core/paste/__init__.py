"""Paste step: restored faces back into their images, through soft masks and colour correction.

options.py (PasteOptions, MASK_KINDS, COLOR_MODES) · step.py (paste_back, face_masks) · masks.py (landmark
outline, facexlib face parsing) · color.py (colour correction)
"""
