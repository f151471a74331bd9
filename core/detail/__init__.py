"""Fine-detail transfer into restored face crops, shared by the lookup and refine steps.

transfer.py (detail band, deficit, colour match, flow registration) · exemplars.py (the bundled exemplar faces
and exemplar detail, the quality slider's detail for faces too blurred to hold any)
"""
