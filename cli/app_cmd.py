"""app: start the gradio app. Binds 127.0.0.1 unless --listen opts in to other addresses."""
from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--listen", nargs="?", const="0.0.0.0", default=None, metavar="ADDR",
                   help="serve on ADDR (0.0.0.0 = every interface when given without ADDR); default 127.0.0.1 only")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default auto)")
    p.add_argument("--restorer", default=None, metavar="NAME|PATH",
                   help="restorer selected when the page opens (registry name, file or path)")
    p.add_argument("--max-megapixels", type=float, default=None,
                   help="refuse uploads larger than this many megapixels (default 50)")
    p.add_argument("--max-file-size", default="200mb", help="largest upload accepted (default 200mb)")
    p.add_argument("--queue-size", type=int, default=16, help="requests that may wait in the queue (default 16)")


def run(args) -> dict:
    from ..errors import FaceRefineError
    if not 0 < args.port < 65536:
        raise FaceRefineError(f"--port must be 1..65535, got {args.port}")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise FaceRefineError("the app needs gradio, which hosts (ComfyUI, A1111) never get from FaceRefine: "
                              "pip install \"facerefine[standalone]\" (or ./run.sh app)") from None
    from ..ui import gradio_app, service
    host = args.listen or "127.0.0.1"
    max_mp = args.max_megapixels if args.max_megapixels else service.DEFAULT_MAX_MEGAPIXELS
    print(f"FaceRefine app on http://{host}:{args.port}  (Ctrl+C to stop)", flush=True)
    try:
        gradio_app.launch(host, args.port, max_megapixels=max_mp, device=args.device, default_restorer=args.restorer,
                          max_file_size=args.max_file_size, queue_size=args.queue_size)
    except OSError as err:
        raise FaceRefineError(f"cannot serve on {host}:{args.port}: {err}") from err
    return {"ok": True, "host": host, "port": args.port}
