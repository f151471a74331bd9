"""The lab: research tooling beside the runtime (train, eval, bench, degrade, datasets, sensitivity,
refine training, tiny test models).

The lab may import the runtime (core/, models/, errors); the runtime never imports the lab
(tests/test_architecture.py checks this). Nothing here is imported when ComfyUI, A1111 or the app
load the pack; the CLI's train/eval/bench commands import it inside the command.
"""
